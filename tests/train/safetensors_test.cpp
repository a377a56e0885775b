// safetensors reader/writer: round trips, byte compatibility with the Python library (a fixture
// it wrote, tests/train/fixtures/make_golden.py, and a header layout it writes), and rejection of
// corrupt input with a hetmoe::Error rather than a crash.
#include "hetmoe/train/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "hetmoe/core/error.h"

namespace hetmoe {
namespace {

const char* const kGoldenPath = HETMOE_SOURCE_DIR "/tests/train/fixtures/golden.safetensors";

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

template <typename T>
std::vector<T> values_of(const TensorView& v) {
  std::vector<T> out(v.nbytes / sizeof(T));
  if (v.nbytes != 0) std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

template <typename T>
TensorView view_of(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
                   const std::vector<T>& values) {
  TensorView v;
  v.name = name;
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.data = values.data();
  v.nbytes = values.size() * sizeof(T);
  return v;
}

// A safetensors byte string: 8-byte little-endian length, the header text as given, the data.
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data = {}) {
  std::vector<uint8_t> out;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Parses `bytes` expecting a hetmoe::Error whose message contains every one of `words`.
void expect_rejected(const std::vector<uint8_t>& bytes, const std::vector<std::string>& words) {
  try {
    SafetensorsFile f(bytes, "mem.safetensors");
    FAIL() << "accepted corrupt input; expected an error mentioning '" << words.front() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.component(), "safetensors");
    EXPECT_EQ(msg.rfind("[safetensors] mem.safetensors: ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& w : words) EXPECT_NE(msg.find(w), std::string::npos) << msg;
  }
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "hetmoe_st_XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override {
    for (const auto& p : created_) std::remove(p.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string path(const std::string& name) {
    created_.push_back(dir_ + "/" + name);
    return created_.back();
  }

  std::string dir_;
  std::vector<std::string> created_;
};

TEST(SafetensorsDtype, Sizes) {
  const std::vector<std::pair<std::string, size_t>> expected = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"I16", 2}, {"U16", 2}, {"F16", 2}, {"BF16", 2},
      {"I32", 4},  {"U32", 4}, {"F32", 4}, {"F64", 8}, {"I64", 8}, {"U64", 8}};
  for (const auto& [dtype, size] : expected)
    EXPECT_EQ(safetensors_dtype_size(dtype), size) << dtype;
  EXPECT_THROW(safetensors_dtype_size("f32"), Error);
  EXPECT_THROW(safetensors_dtype_size(""), Error);
  EXPECT_THROW(safetensors_dtype_size("C64"), Error);
}

TEST_F(SafetensorsTest, RoundTripSeveralDtypesAndShapes) {
  const std::vector<float> f32 = {0.5f, -1.0f, 2.25f, 3.0f, 4.0f, -5.5f};
  const std::vector<double> f64 = {3.141592653589793};
  const std::vector<int64_t> i64 = {-1, 0, int64_t{1} << 40, 7};
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc020, 0x0000};
  const std::vector<uint8_t> u8 = {1, 2, 3, 4, 5};
  const std::vector<int32_t> empty;
  const std::vector<uint8_t> flags = {1, 0};
  const std::string file = path("round.safetensors");
  // Deliberately not in name order: the writer sorts.
  write_safetensors(file,
                    {view_of("z_f32", "F32", {2, 3}, f32), view_of("scalar", "F64", {}, f64),
                     view_of("i64", "I64", {4}, i64), view_of("bf16", "BF16", {3}, bf16),
                     view_of("bytes", "U8", {5, 1}, u8), view_of("empty", "I32", {0, 4}, empty),
                     view_of("flags", "BOOL", {2}, flags)});

  SafetensorsFile f(file);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"bf16", "bytes", "empty", "flags", "i64", "scalar",
                                                 "z_f32"}));
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_TRUE(f.contains("scalar"));
  EXPECT_FALSE(f.contains("nope"));

  const TensorView& a = f.get("z_f32");
  EXPECT_EQ(a.name, "z_f32");
  EXPECT_EQ(a.dtype, "F32");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(values_of<float>(a), f32);

  const TensorView& s = f.get("scalar");
  EXPECT_EQ(s.dtype, "F64");
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.nbytes, 8u);
  EXPECT_EQ(values_of<double>(s), f64);

  EXPECT_EQ(values_of<int64_t>(f.get("i64")), i64);
  EXPECT_EQ(f.get("bf16").dtype, "BF16");
  EXPECT_EQ(values_of<uint16_t>(f.get("bf16")), bf16);
  EXPECT_EQ(f.get("bytes").shape, (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(values_of<uint8_t>(f.get("bytes")), u8);
  EXPECT_EQ(values_of<uint8_t>(f.get("flags")), flags);

  const TensorView& e = f.get("empty");
  EXPECT_EQ(e.dtype, "I32");
  EXPECT_EQ(e.shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(e.nbytes, 0u);
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  const std::vector<float> x = {1.0f};
  const std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"step", "1200"},
      {"note", "quotes \" and \\ and unicode \xc3\xa9"},
      {"empty", ""}};
  const std::string file = path("meta.safetensors");
  write_safetensors(file, {view_of("x", "F32", {1}, x)}, meta);
  SafetensorsFile f(file);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.names(), std::vector<std::string>{"x"});
}

TEST_F(SafetensorsTest, NoTensorsOnlyMetadata) {
  const std::string file = path("none.safetensors");
  write_safetensors(file, {}, {{"k", "v"}});
  SafetensorsFile f(file);
  EXPECT_TRUE(f.names().empty());
  EXPECT_EQ(f.metadata().at("k"), "v");
}

TEST_F(SafetensorsTest, LayoutAlignedSortedAndContiguous) {
  const std::vector<uint8_t> odd = {1, 2, 3};  // 3 bytes: makes the header length matter
  const std::vector<float> f = {1.0f, 2.0f};
  const std::vector<int64_t> l = {9};
  const std::string file = path("layout.safetensors");
  write_safetensors(
      file,
      {view_of("c", "I64", {1}, l), view_of("a", "U8", {3}, odd), view_of("b", "F32", {2}, f)},
      {{"m", "x"}});
  const std::vector<uint8_t> bytes = read_bytes(file);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  EXPECT_EQ(bytes.size(), 8 + n + 3 + 8 + 8);
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + n);
  // Python's layout: metadata first, then entries in data order with dtype, shape, data_offsets.
  const std::string expected_json =
      R"({"__metadata__":{"m":"x"},"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]},)"
      R"("c":{"dtype":"I64","shape":[1],"data_offsets":[11,19]}})";
  EXPECT_EQ(header.substr(0, expected_json.size()), expected_json);
  EXPECT_EQ(header.find_first_not_of(' ', expected_json.size()), std::string::npos)
      << "header must be padded with spaces";
  // The bytes follow in name order.
  EXPECT_EQ(bytes[8 + n], 1);
  EXPECT_EQ(bytes[8 + n + 2], 3);
  float b0 = 0;
  std::memcpy(&b0, &bytes[8 + n + 3], 4);
  EXPECT_EQ(b0, 1.0f);
}

// Bytes produced by Python safetensors 0.8 (safetensors.torch.save_file) for
// {"w2": [3., 4., 5.], "w1": [[1.], [2.]]} (float32), metadata {"format": "pt"}: where Python's
// layout (dtype, then name) coincides with ours (name), the writer's output is byte-identical.
TEST_F(SafetensorsTest, WriterMatchesPythonBytes) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w1":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},)"
      R"("w2":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}})";
  std::string padded = header;
  padded.resize((header.size() + 7) / 8 * 8, ' ');
  const std::vector<float> w1 = {1.0f, 2.0f};
  const std::vector<float> w2 = {3.0f, 4.0f, 5.0f};
  std::vector<uint8_t> data(20);
  std::memcpy(data.data(), w1.data(), 8);
  std::memcpy(data.data() + 8, w2.data(), 12);
  const std::vector<uint8_t> expected = make_file(padded, data);

  const std::string file = path("py.safetensors");
  write_safetensors(file, {view_of("w2", "F32", {3}, w2), view_of("w1", "F32", {2, 1}, w1)},
                    {{"format", "pt"}});
  EXPECT_EQ(read_bytes(file), expected);
}

TEST(SafetensorsGolden, ReadsFileWrittenByPython) {
  SafetensorsFile f(kGoldenPath);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  const TensorView& a = f.get("a");
  EXPECT_EQ(a.dtype, "F32");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(values_of<float>(a), (std::vector<float>{0, 1, 2, 3, 4, 5}));

  const TensorView& b = f.get("b");
  EXPECT_EQ(b.dtype, "I64");
  EXPECT_EQ(b.shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(values_of<int64_t>(b), (std::vector<int64_t>{10, 20, 30, 40}));

  const TensorView& c = f.get("c");
  EXPECT_EQ(c.dtype, "BF16");
  EXPECT_EQ(c.shape, (std::vector<int64_t>{2}));
  // bfloat16 bit patterns: 1.0 = 0x3f80, -2.5 = 0xc020.
  EXPECT_EQ(values_of<uint16_t>(c), (std::vector<uint16_t>{0x3f80, 0xc020}));
}

TEST_F(SafetensorsTest, GoldenRewriteRoundTrip) {
  SafetensorsFile golden(kGoldenPath);
  std::vector<TensorView> views;
  for (const auto& name : golden.names()) views.push_back(golden.get(name));
  const std::string file = path("rewrite.safetensors");
  write_safetensors(file, views, golden.metadata());
  SafetensorsFile again(file);
  EXPECT_EQ(again.names(), golden.names());
  EXPECT_EQ(again.metadata(), golden.metadata());
  for (const auto& name : golden.names()) {
    const TensorView& x = golden.get(name);
    const TensorView& y = again.get(name);
    EXPECT_EQ(y.dtype, x.dtype);
    EXPECT_EQ(y.shape, x.shape);
    ASSERT_EQ(y.nbytes, x.nbytes);
    EXPECT_EQ(std::memcmp(y.data, x.data, x.nbytes), 0) << name;
  }
}

TEST(SafetensorsGolden, ViewsSurviveMove) {
  SafetensorsFile f(kGoldenPath);
  SafetensorsFile moved(std::move(f));
  EXPECT_EQ(values_of<int64_t>(moved.get("b")), (std::vector<int64_t>{10, 20, 30, 40}));
}

TEST_F(SafetensorsTest, WriterRejectsInconsistentViews) {
  const std::vector<float> x = {1, 2, 3, 4};
  const std::string file = path("bad.safetensors");
  auto expect_error = [&](const std::vector<TensorView>& views, const std::string& words) {
    try {
      write_safetensors(file, views);
      FAIL() << "expected an error mentioning '" << words << "'";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(file), std::string::npos) << msg;
      EXPECT_NE(msg.find(words), std::string::npos) << msg;
    }
  };
  expect_error({view_of("x", "F32", {3}, x)}, "does not match shape");
  expect_error({view_of("x", "F32", {2, 2}, x), view_of("x", "F32", {4}, x)}, "duplicate");
  expect_error({view_of("x", "F31", {4}, x)}, "unknown dtype");
  expect_error({view_of("", "F32", {4}, x)}, "empty tensor name");
  expect_error({view_of("x", "F32", {-4}, x)}, "negative");
  expect_error({view_of("__metadata__", "F32", {4}, x)}, "reserved");
  expect_error({view_of("x", "U8", {int64_t{1} << 62, int64_t{1} << 62}, x)}, "overflow");
  TensorView null_data = view_of("x", "F32", {4}, x);
  null_data.data = nullptr;
  expect_error({null_data}, "null data");
}

TEST_F(SafetensorsTest, WriterReportsUnwritablePath) {
  const std::vector<float> x = {1};
  const std::string file = dir_ + "/no/such/dir/x.safetensors";
  try {
    write_safetensors(file, {view_of("x", "F32", {1}, x)});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open '" + file + "'"), std::string::npos)
        << e.what();
  }
}

TEST(SafetensorsWriter, ReportsWriteFailure) {
  if (::access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no writable /dev/full";
  const std::vector<float> x(1024, 1.0f);
  try {
    write_safetensors("/dev/full", {view_of("x", "F32", {1024}, x)});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[safetensors] /dev/full: ", 0), 0u) << msg;
    EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  }
  EXPECT_EQ(::access("/dev/full", F_OK), 0) << "the device node must not be removed";
}

TEST(SafetensorsReader, MissingFile) {
  try {
    SafetensorsFile f("/nonexistent/dir/model.safetensors");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "[safetensors] cannot open '/nonexistent/dir/model.safetensors': No such file or "
                 "directory");
  }
}

TEST(SafetensorsReader, MissingTensorLookup) {
  SafetensorsFile f(make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", {7}),
                    "mem.safetensors");
  EXPECT_EQ(values_of<uint8_t>(f.get("a")), std::vector<uint8_t>{7});
  try {
    f.get("missing_weight");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "[safetensors] mem.safetensors: no tensor named 'missing_weight'");
  }
}

TEST(SafetensorsReader, RejectsTruncatedFiles) {
  expect_rejected({}, {"too small", "truncated"});
  expect_rejected({1, 0, 0}, {"too small"});
  const std::vector<uint8_t> golden = read_bytes(kGoldenPath);
  ASSERT_GT(golden.size(), 100u);
  // Cut inside the header: the length prefix points past the end.
  expect_rejected(std::vector<uint8_t>(golden.begin(), golden.begin() + 50),
                  {"header length", "exceeds"});
  // Cut inside the data: the last tensor's offsets point past the end.
  expect_rejected(std::vector<uint8_t>(golden.begin(), golden.end() - 1), {"out of range"});
}

TEST(SafetensorsReader, RejectsHeaderLengthTooLarge) {
  std::vector<uint8_t> bytes = make_file("{}");
  bytes[7] = 0x80;  // N = 2^63 + 2
  expect_rejected(bytes, {"header length", "exceeds"});
  bytes[7] = 0xff;
  for (int i = 0; i < 7; ++i) bytes[i] = 0xff;  // N = 2^64 - 1: must not wrap around
  expect_rejected(bytes, {"header length", "exceeds"});
  // Within the file but over the 100 MB limit the Python library also enforces.
  std::vector<uint8_t> big(8 + 100'000'001, ' ');
  const uint64_t n = 100'000'001;
  for (int i = 0; i < 8; ++i) big[i] = static_cast<uint8_t>(n >> (8 * i));
  expect_rejected(big, {"too large"});
}

TEST(SafetensorsReader, RejectsBadJson) {
  expect_rejected(make_file(R"({"a":{"dtype":"U8",)"), {"invalid JSON header"});
  expect_rejected(make_file("not json at all"), {"invalid JSON header"});
  expect_rejected(make_file(""), {"invalid JSON header"});
  expect_rejected(make_file(std::string("{\"a\xff\":1}")), {"invalid JSON header"});  // bad UTF-8
  expect_rejected(make_file(R"({"a":{}} trailing)"), {"invalid JSON header"});
  // Deep nesting must neither crash nor recurse without bound.
  expect_rejected(make_file(std::string(200000, '[') + std::string(200000, ']')),
                  {"not a JSON object"});
  expect_rejected(make_file("{\"x\":" + std::string(200000, '[') + std::string(200000, ']') + "}"),
                  {"entry is not a JSON object", "(tensor 'x')"});
}

TEST(SafetensorsReader, RejectsNonObjectHeaderAndEntries) {
  expect_rejected(make_file("[]"), {"header is not a JSON object"});
  expect_rejected(make_file("42"), {"header is not a JSON object"});
  expect_rejected(make_file(R"({"w":[1,2]})"), {"entry is not a JSON object", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"shape":[1],"data_offsets":[0,1]}})", {0}),
                  {"dtype", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"U8","data_offsets":[0,1]}})", {0}),
                  {"shape", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"U8","shape":[1]}})", {0}),
                  {"data_offsets", "(tensor 'w')"});
}

TEST(SafetensorsReader, RejectsUnknownDtype) {
  expect_rejected(make_file(R"({"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})",
                            std::vector<uint8_t>(16)),
                  {"unknown dtype 'F128'", "(tensor 'w')"});
  expect_rejected(
      make_file(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", std::vector<uint8_t>(4)),
      {"dtype", "(tensor 'w')"});
}

TEST(SafetensorsReader, RejectsBadShapes) {
  const std::vector<uint8_t> data(8);
  for (const char* shape : {"[-1]", "[1.5]", "[\"2\"]", "[[2]]", "2", "null", "[1e300]"}) {
    expect_rejected(make_file(std::string(R"({"w":{"dtype":"U8","shape":)") + shape +
                                  R"(,"data_offsets":[0,2]}})",
                              data),
                    {"shape", "(tensor 'w')"});
  }
  // Dimensions beyond int64 and products that overflow 64 bits.
  expect_rejected(make_file(R"({"w":{"dtype":"U8","shape":[18446744073709551615],)"
                            R"("data_offsets":[0,1]}})",
                            data),
                  {"shape", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
                            R"("data_offsets":[0,1]}})",
                            data),
                  {"overflow", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"F64","shape":[4611686018427387904],)"
                            R"("data_offsets":[0,1]}})",
                            data),
                  {"overflow", "(tensor 'w')"});
}

TEST(SafetensorsReader, RejectsOffsetsOutOfRange) {
  const std::vector<uint8_t> data(8);
  expect_rejected(make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", data),
                  {"out of range", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[9,9]}})", data),
                  {"out of range", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[6,4]}})", data),
                  {"out of range", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"U8","shape":[1],)"
                            R"("data_offsets":[18446744073709551615,0]}})",
                            data),
                  {"out of range", "(tensor 'w')"});
  for (const char* offsets : {"[0]", "[0,1,2]", "[-1,0]", "[0,1.0]", "{}", "[\"0\",\"1\"]"}) {
    expect_rejected(
        make_file(std::string(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":)") + offsets + "}}",
                  data),
        {"data_offsets", "(tensor 'w')"});
  }
}

TEST(SafetensorsReader, RejectsWrongByteCountForShape) {
  expect_rejected(make_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
                            std::vector<uint8_t>(16)),
                  {"byte count 12 does not match shape", "expected 16", "(tensor 'w')"});
  expect_rejected(make_file(R"({"w":{"dtype":"F32","shape":[],"data_offsets":[0,0]}})",
                            std::vector<uint8_t>(16)),
                  {"does not match shape", "(tensor 'w')"});
}

TEST(SafetensorsReader, RejectsOverlappingTensors) {
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            std::vector<uint8_t>(12)),
                  {"overlaps", "'a'", "(tensor 'b')"});
  expect_rejected(make_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                            std::vector<uint8_t>(4)),
                  {"overlaps"});
  // A tensor nested inside another.
  expect_rejected(make_file(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                            std::vector<uint8_t>(8)),
                  {"overlaps"});
}

TEST(SafetensorsReader, AcceptsEmptyTensorsAnywhereAndNullMetadata) {
  SafetensorsFile f(make_file(R"({"__metadata__":null,)"
                              R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                              R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]},)"
                              R"("z":{"dtype":"I64","shape":[3,0],"data_offsets":[4,4]}})",
                              {1, 2, 3, 4}),
                    "mem.safetensors");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "e", "z"}));
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.get("e").nbytes, 0u);
  EXPECT_EQ(f.get("z").shape, (std::vector<int64_t>{3, 0}));
}

TEST(SafetensorsReader, RejectsBadMetadata) {
  expect_rejected(make_file(R"({"__metadata__":{"format":1}})"), {"__metadata__", "format"});
  expect_rejected(make_file(R"({"__metadata__":{"a":{"b":"c"}}})"), {"__metadata__"});
  expect_rejected(make_file(R"({"__metadata__":["pt"]})"), {"__metadata__", "not a JSON object"});
}

TEST(SafetensorsReader, ErrorMessagesStayOneLine) {
  // Control characters and long names from the file are escaped and truncated.
  const std::string name = "evil\\nname\\u0007" + std::string(1000, 'x');
  expect_rejected(
      make_file("{\"" + name + R"(":{"dtype":"BAD\n","shape":[1],"data_offsets":[0,1]}})", {0}),
      {"unknown dtype 'BAD\\x0a'", "(tensor 'evil\\x0aname\\x07xxx", "...')"});
}

// A light in-process fuzz (no substitute for a coverage-guided fuzzer): every prefix of the golden
// file and many byte mutations of it either parse to views inside the buffer or throw
// hetmoe::Error; nothing else escapes and (under ASan/UBSan) nothing reads out of bounds.
TEST(SafetensorsReader, SurvivesTruncationAndMutation) {
  const std::vector<uint8_t> golden = read_bytes(kGoldenPath);
  ASSERT_FALSE(golden.empty());
  auto try_parse = [](std::vector<uint8_t> bytes) {
    const size_t size = bytes.size();
    try {
      SafetensorsFile f(std::move(bytes), "fuzz");
      for (const auto& name : f.names()) {
        const TensorView& v = f.get(name);
        EXPECT_LE(v.nbytes, size);
        // Touch every byte so ASan would notice a view outside the buffer.
        unsigned sum = 0;
        for (size_t i = 0; i < v.nbytes; ++i) sum += static_cast<const uint8_t*>(v.data)[i];
        (void)sum;
      }
      return true;
    } catch (const Error&) {
      return false;
    }
  };
  EXPECT_TRUE(try_parse(golden));
  for (size_t len = 0; len < golden.size(); ++len) {
    EXPECT_FALSE(try_parse(std::vector<uint8_t>(golden.begin(), golden.begin() + len))) << len;
  }
  std::mt19937 rng(1234);
  const uint8_t interesting[] = {0x00, 0xff, '"', '{', '}', '[', ']', ',', ':', '-', '9', 0x80};
  for (size_t pos = 0; pos < golden.size(); ++pos) {
    for (uint8_t value : interesting) {
      std::vector<uint8_t> mutated = golden;
      mutated[pos] = value;
      try_parse(std::move(mutated));
    }
  }
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> mutated = golden;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      mutated[rng() % mutated.size()] = static_cast<uint8_t>(rng());
    }
    if (rng() % 4 == 0) mutated.resize(rng() % (mutated.size() + 1));
    try_parse(std::move(mutated));
  }
}

}  // namespace
}  // namespace hetmoe
