// TokenDataset: index validation, the tokens.bin checks (size, checksum, id range) and the
// reproducible window sampler.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hetmoe/core/error.h"
#include "hetmoe/data/dataset.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace hetmoe {
namespace {

using test_support::TempDir;

void write_file(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::string checksum_of(const std::string& raw) {
  char text[32];
  std::snprintf(text, sizeof text, "fnv1a64:%016llx",
                static_cast<unsigned long long>(fnv1a64(raw.data(), raw.size())));
  return text;
}

// Writes a dataset by hand: `ids` split at train_end, one document per split.
json write_dataset(const fs::path& dir, const std::vector<int>& ids, int64_t train_end,
                   int64_t vocab_size = 257) {
  std::string raw;
  for (int id : ids) {
    raw.push_back(static_cast<char>(id & 0xff));
    raw.push_back(static_cast<char>((id >> 8) & 0xff));
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  json documents = json::array();
  if (train_end > 0) documents.push_back({0, train_end});
  if (n > train_end) documents.push_back({train_end, n - train_end});
  json index = {{"magic", "hetmoe-dataset"},
                {"version", 1},
                {"dtype", "uint16"},
                {"tokenizer", "byte"},
                {"vocab_size", vocab_size},
                {"num_tokens", n},
                {"documents", documents},
                {"splits", {{"train", {0, train_end}}, {"val", {train_end, n}}}},
                {"sources", json::array({"/dev/null"})},
                {"checksum", checksum_of(raw)}};
  write_file(dir / "tokens.bin", raw);
  write_file(dir / "index.json", index.dump(2));
  return index;
}

// Train tokens count 0,1,..,99,0,1,.. and val tokens 100..199 likewise, so a window shows
// both which split it came from and that it is contiguous.
std::vector<int> patterned_tokens(int64_t train, int64_t val) {
  std::vector<int> ids;
  for (int64_t i = 0; i < train; ++i) ids.push_back(static_cast<int>(i % 100));
  for (int64_t i = 0; i < val; ++i) ids.push_back(100 + static_cast<int>(i % 100));
  return ids;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.component(), "data");
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("[data] ", 0), 0u) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    return what;
  }
  ADD_FAILURE() << "expected hetmoe::Error";
  return "";
}

#define EXPECT_ERROR_CONTAINS(stmt, needle)                                   \
  do {                                                                        \
    const std::string what_ = error_of([&] { stmt; });                        \
    EXPECT_NE(what_.find(needle), std::string::npos) << "message: " << what_; \
  } while (0)

// Rewrites index.json after applying `edit` (the checksum is left as is).
void edit_index(const fs::path& dir, const std::function<void(json&)>& edit) {
  json index = json::parse(read_bytes(dir / "index.json"));
  edit(index);
  write_file(dir / "index.json", index.dump());
}

TEST(TokenDataset, OpensAPreparedDataset) {
  TempDir tmp;
  write_file(tmp.path() / "corpus", "abc\n%\n\xC3\xA9t\xC3\xA9\n%\nxyz\n");
  PrepareOptions o;
  o.inputs = {(tmp.path() / "corpus").string()};
  o.out_dir = (tmp.path() / "out").string();
  o.separator = "%";
  o.val_fraction = 0.0;
  prepare_dataset(o);

  TokenDataset ds(o.out_dir);
  const std::vector<int> expected = {'a',  'b',  'c', '\n', 256, 0xC3, 0xA9, 't', 0xC3,
                                     0xA9, '\n', 256, 'x',  'y', 'z',  '\n', 256};
  EXPECT_EQ(ds.dir(), o.out_dir);
  EXPECT_EQ(ds.vocab_size(), 257);
  ASSERT_EQ(ds.num_tokens(), static_cast<int64_t>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(ds.token(i), expected[i]) << i;
  EXPECT_ERROR_CONTAINS(ds.token(-1), "token position -1 is out of range [0, 17)");
  EXPECT_ERROR_CONTAINS(ds.token(17), "token position 17 is out of range [0, 17)");
}

TEST(TokenDataset, MissingIndex) {
  TempDir tmp;
  EXPECT_ERROR_CONTAINS(
      TokenDataset ds(tmp.str()),
      "[data] " + tmp.str() + ": no index.json (run `hetmoe data prepare` first)");
  EXPECT_ERROR_CONTAINS(TokenDataset ds((tmp.path() / "does-not-exist").string()), "no index.json");
}

TEST(TokenDataset, MissingTokensBin) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(10, 0), 10);
  fs::remove(tmp.path() / "tokens.bin");
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "tokens.bin: cannot open");
}

TEST(TokenDataset, TokensBinThatIsNotAFileIsNamedAsSuch) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(10, 0), 10);
  fs::remove(tmp.path() / "tokens.bin");
  fs::create_directory(tmp.path() / "tokens.bin");
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), (tmp.path() / "tokens.bin").string() +
                                                        ": not a regular file (a directory)");
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str(), false), "tokens.bin: not a regular file");

  // A fifo: refused without blocking in open() (a build without the check would hang here).
  if (HasFailure()) return;
  fs::remove(tmp.path() / "tokens.bin");
  ASSERT_EQ(::mkfifo((tmp.path() / "tokens.bin").c_str(), 0600), 0);
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "tokens.bin: not a regular file");
}

TEST(TokenDataset, IndexThatIsNotAFileIsNamedAsSuch) {
  TempDir tmp;
  fs::create_directory(tmp.path() / "index.json");
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()),
                        (tmp.path() / "index.json").string() + ": not a regular file");
}

TEST(TokenDataset, TellsItsTokenizer) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(10, 5), 10);
  const TokenDataset ds(tmp.str());
  EXPECT_EQ(ds.tokenizer(), "byte");

  write_file(tmp.path() / "corpus", "some text\n");
  PrepareOptions o;
  o.inputs = {(tmp.path() / "corpus").string()};
  o.out_dir = (tmp.path() / "prepared").string();
  prepare_dataset(o);
  EXPECT_EQ(TokenDataset(o.out_dir).tokenizer(), "byte");
}

TEST(TokenDataset, TruncatedTokensBin) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(60, 40), 60);
  fs::resize_file(tmp.path() / "tokens.bin", 150);
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()),
                        (tmp.path() / "tokens.bin").string() + ": size 150 bytes, index says 200");
  // Size is checked even without checksum verification.
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str(), false), "size 150 bytes, index says 200");
  fs::resize_file(tmp.path() / "tokens.bin", 201);
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "size 201 bytes, index says 200");
}

TEST(TokenDataset, CorruptedByteFailsTheChecksum) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(60, 40), 60);
  {
    std::fstream f(tmp.path() / "tokens.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(2 * 37);
    f.put(static_cast<char>(99));  // still a valid id, so only the checksum can catch it
  }
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "tokens.bin: checksum mismatch");
  // Opening without verification skips the pass and serves the bytes as they are.
  TokenDataset ds(tmp.str(), /*verify_checksum=*/false);
  EXPECT_EQ(ds.token(37), 99);
}

TEST(TokenDataset, MalformedIndexJson) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(10, 0), 10);
  const std::string name = (tmp.path() / "index.json").string();
  for (const std::string bad : {"", "{\"magic\": \"hetmoe-dataset\",\n \"version\": ", "{]",
                                "not json at all\n\n", "{\"a\":1}}"}) {
    write_file(tmp.path() / "index.json", bad);
    EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "[data] " + name + ": malformed JSON");
  }
  write_file(tmp.path() / "index.json", "[1, 2, 3]");
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), name + ": expected a JSON object");
}

TEST(TokenDataset, WrongMagicOrVersion) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(10, 0), 10);
  edit_index(tmp.path(), [](json& j) { j["magic"] = "something-else"; });
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "not a hetmoe dataset index");

  write_dataset(tmp.path(), patterned_tokens(10, 0), 10);
  edit_index(tmp.path(), [](json& j) { j.erase("magic"); });
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "missing field \"magic\"");

  write_dataset(tmp.path(), patterned_tokens(10, 0), 10);
  edit_index(tmp.path(), [](json& j) { j["version"] = 2; });
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "unsupported dataset version 2");

  write_dataset(tmp.path(), patterned_tokens(10, 0), 10);
  edit_index(tmp.path(), [](json& j) { j["version"] = "1"; });
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), "field \"version\" must be an integer");
}

TEST(TokenDataset, RejectsInvalidFields) {
  TempDir tmp;
  struct Case {
    std::function<void(json&)> edit;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](json& j) { j["dtype"] = "uint32"; }, "unsupported dtype \"uint32\""},
      {[](json& j) { j["dtype"] = 16; }, "field \"dtype\" must be a string"},
      {[](json& j) { j["tokenizer"] = "bpe"; }, "unsupported tokenizer"},
      {[](json& j) { j["vocab_size"] = 0; }, "vocab_size 0 is outside [1, 65536]"},
      {[](json& j) { j["vocab_size"] = 70000; }, "vocab_size 70000 is outside"},
      {[](json& j) { j["vocab_size"] = 2.5; }, "field \"vocab_size\" must be an integer"},
      {[](json& j) { j["num_tokens"] = -1; }, "num_tokens -1 is out of range"},
      {[](json& j) { j["num_tokens"] = 18446744073709551615ULL; }, "is out of range"},
      {[](json& j) { j.erase("splits"); }, "missing field \"splits\""},
      {[](json& j) { j["splits"].erase("val"); }, "missing field \"splits.val\""},
      {[](json& j) {
         j["splits"]["train"] = {0, 60, 100};
       },
       "splits.train must be a [begin, end]"},
      {[](json& j) {
         j["splits"]["val"] = {60, 101};
       },
       "splits.val [60, 101] is not within"},
      {[](json& j) {
         j["splits"]["train"] = {5, 60};
       },
       "splits are inconsistent"},
      {[](json& j) {
         j["splits"]["val"] = {61, 100};
       },
       "splits are inconsistent"},
      {[](json& j) {
         j["splits"]["train"] = {0, "60"};
       },
       "splits.train[1] must be an integer"},
      {[](json& j) { j.erase("documents"); }, "missing field \"documents\""},
      {[](json& j) {
         j["documents"] = {{0, 60}, {61, 39}};
       },
       "documents[1] [61, 39]"},
      {[](json& j) {
         j["documents"] = {{0, 60}};
       },
       "documents cover 60 tokens"},
      {[](json& j) {
         j["documents"] = {{0, 50}, {50, 50}};
       },
       "falls inside a document"},
      {[](json& j) { j["sources"] = {1}; }, "\"sources\" must be an array of strings"},
      {[](json& j) { j["checksum"] = "crc32:1234"; }, "\"checksum\" must look like"},
      {[](json& j) { j.erase("checksum"); }, "missing field \"checksum\""},
  };
  for (const Case& c : cases) {
    write_dataset(tmp.path(), patterned_tokens(60, 40), 60);
    edit_index(tmp.path(), c.edit);
    EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()), c.needle);
  }
}

TEST(TokenDataset, OutOfRangeTokenIdIsDetected) {
  TempDir tmp;
  std::vector<int> ids = patterned_tokens(30, 10);
  ids[17] = 300;
  ids[25] = 65535;
  write_dataset(tmp.path(), ids, 30);  // checksum matches: the ids themselves are the problem
  EXPECT_ERROR_CONTAINS(TokenDataset ds(tmp.str()),
                        "token id 300 at position 17 is out of range for vocab_size 257");

  // Without verification the bad id is still caught when a window covers it.
  TokenDataset ds(tmp.str(), false);
  std::vector<int32_t> out(30);
  EXPECT_ERROR_CONTAINS(ds.sample_windows(Split::Train, 1, 30, 0, 0, out.data()),
                        "token id 300 at position 17");

  // A smaller vocabulary turns ordinary bytes out of range too.
  write_dataset(tmp.path(), patterned_tokens(30, 10), 30, /*vocab_size=*/50);
  EXPECT_ERROR_CONTAINS(TokenDataset ds2(tmp.str()), "token id 100 at position 30");
}

TEST(TokenDataset, EmptyDatasetOpens) {
  TempDir tmp;
  write_dataset(tmp.path(), {}, 0);
  TokenDataset ds(tmp.str());
  EXPECT_EQ(ds.num_tokens(), 0);
  std::vector<int32_t> out(1);
  EXPECT_ERROR_CONTAINS(ds.sample_windows(Split::Train, 1, 1, 0, 0, out.data()),
                        "the train split has 0 tokens, fewer than the window of 1");
}

TEST(TokenDataset, SampleWindowsAreReproducible) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(5000, 1000), 5000);
  TokenDataset ds(tmp.str());
  const int64_t batch = 8, len = 32;
  auto sample = [&](Split split, uint64_t seed, uint64_t step) {
    std::vector<int32_t> out(batch * len, -7);
    ds.sample_windows(split, batch, len, seed, step, out.data());
    return out;
  };
  EXPECT_EQ(sample(Split::Train, 1, 5), sample(Split::Train, 1, 5));
  EXPECT_NE(sample(Split::Train, 1, 5), sample(Split::Train, 1, 6));
  EXPECT_NE(sample(Split::Train, 1, 5), sample(Split::Train, 2, 5));
  EXPECT_EQ(sample(Split::Val, 3, 0), sample(Split::Val, 3, 0));
  EXPECT_NE(sample(Split::Val, 3, 0), sample(Split::Val, 3, 1));

  // A second dataset object over the same files gives the same windows (resume without state).
  TokenDataset again(tmp.str());
  std::vector<int32_t> out(batch * len);
  again.sample_windows(Split::Train, batch, len, 1, 5, out.data());
  EXPECT_EQ(out, sample(Split::Train, 1, 5));

  // Rows within a batch differ, and each row is a prefix-stable function of its index.
  const auto big = sample(Split::Train, 9, 0);
  std::set<std::vector<int32_t>> rows;
  for (int64_t b = 0; b < batch; ++b)
    rows.emplace(big.begin() + b * len, big.begin() + (b + 1) * len);
  EXPECT_GT(rows.size(), 1u);
  std::vector<int32_t> three(3 * len);
  ds.sample_windows(Split::Train, 3, len, 9, 0, three.data());
  EXPECT_TRUE(std::equal(three.begin(), three.end(), big.begin()));
}

TEST(TokenDataset, WindowsLieInsideTheirSplit) {
  TempDir tmp;
  const int64_t train = 700, val = 300;
  write_dataset(tmp.path(), patterned_tokens(train, val), train);
  TokenDataset ds(tmp.str());
  ASSERT_EQ(ds.split_size(Split::Train), train);
  ASSERT_EQ(ds.split_size(Split::Val), val);
  const int64_t batch = 16, len = 50;
  std::vector<int32_t> out(batch * len);
  for (Split split : {Split::Train, Split::Val}) {
    const int lo = split == Split::Train ? 0 : 100;
    for (uint64_t step = 0; step < 50; ++step) {
      ds.sample_windows(split, batch, len, 42, step, out.data());
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = 0; i < len; ++i) {
          const int32_t v = out[b * len + i];
          ASSERT_GE(v, lo);
          ASSERT_LT(v, lo + 100);
          if (i > 0) {
            ASSERT_EQ(v - lo, (out[b * len + i - 1] - lo + 1) % 100) << "not contiguous";
          }
        }
      }
    }
  }
}

TEST(TokenDataset, WindowStartsCoverTheWholeSplit) {
  TempDir tmp;
  // Train tokens 0..19 (one lap of the pattern), so a window's first token is its start.
  write_dataset(tmp.path(), patterned_tokens(20, 20), 20);
  TokenDataset ds(tmp.str());
  const int64_t len = 16;  // 5 possible starts: 0..4
  std::set<int32_t> starts;
  std::vector<int32_t> out(64 * len);
  for (uint64_t step = 0; step < 10; ++step) {
    ds.sample_windows(Split::Train, 64, len, 0, step, out.data());
    for (int64_t b = 0; b < 64; ++b) starts.insert(out[b * len]);
  }
  EXPECT_EQ(starts, (std::set<int32_t>{0, 1, 2, 3, 4}));

  // A window exactly as long as the split is the whole split.
  ds.sample_windows(Split::Val, 2, 20, 5, 5, out.data());
  for (int64_t i = 0; i < 40; ++i) EXPECT_EQ(out[i], 100 + i % 20);
}

TEST(TokenDataset, WindowLongerThanSplitIsAnError) {
  TempDir tmp;
  write_dataset(tmp.path(), patterned_tokens(100, 10), 100);
  TokenDataset ds(tmp.str());
  std::vector<int32_t> out(200);
  EXPECT_ERROR_CONTAINS(
      ds.sample_windows(Split::Val, 1, 11, 0, 0, out.data()),
      "[data] " + tmp.str() + ": the val split has 10 tokens, fewer than the window of 11");
  EXPECT_ERROR_CONTAINS(ds.sample_windows(Split::Train, 1, 101, 0, 0, out.data()),
                        "the train split has 100 tokens, fewer than the window of 101");
  EXPECT_ERROR_CONTAINS(ds.sample_windows(Split::Train, 1, 0, 0, 0, out.data()),
                        "window length must be >= 1");
  EXPECT_ERROR_CONTAINS(ds.sample_windows(Split::Train, -1, 4, 0, 0, out.data()),
                        "batch must be >= 0");
  EXPECT_NO_THROW(ds.sample_windows(Split::Val, 1, 10, 0, 0, out.data()));
  EXPECT_NO_THROW(ds.sample_windows(Split::Train, 0, 4, 0, 0, nullptr));
}

}  // namespace
}  // namespace hetmoe
