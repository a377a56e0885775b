// safetensors reader and writer. The reader treats its input as hostile (it is fuzzed): every
// length, offset and JSON field is checked before use, and nothing from the file is trusted to
// index memory. Layout written: 8-byte little-endian header length N, N bytes of compact JSON
// padded with spaces so the data starts 8-byte aligned, then the tensors' bytes in name order.
#include "hetmoe/train/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "hetmoe/core/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors stores little-endian data; hetmoe's reader/writer assume a little-endian host"
#endif

namespace hetmoe {
namespace {

constexpr const char* kComponent = "safetensors";
constexpr const char* kMetadataKey = "__metadata__";
// Same limit as the Python/Rust safetensors library (MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kAlignment = 8;

// Returns the element size of a safetensors dtype, or 0 when the dtype is unknown.
size_t dtype_size_or_zero(const std::string& dtype) {
  static const std::pair<const char*, size_t> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"I16", 2}, {"U16", 2}, {"F16", 2}, {"BF16", 2},
      {"I32", 4},  {"U32", 4}, {"F32", 4}, {"F64", 8}, {"I64", 8}, {"U64", 8},
  };
  for (const auto& [name, size] : kSizes) {
    if (dtype == name) return size;
  }
  return 0;
}

// Makes an untrusted string safe to embed in a one-line error message: control and non-ASCII
// bytes are escaped and the result is truncated.
std::string printable(const std::string& s, size_t max_len = 80) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= max_len) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::string tensor_suffix(const std::string& name) {
  return " (tensor '" + printable(name) + "')";
}

// numel = product(dims) with overflow detection; false on overflow. A zero dimension anywhere
// gives 0 regardless of the others.
bool checked_numel(const std::vector<uint64_t>& dims, uint64_t* numel) {
  if (std::find(dims.begin(), dims.end(), uint64_t{0}) != dims.end()) {
    *numel = 0;
    return true;
  }
  uint64_t n = 1;
  for (uint64_t d : dims) {
    if (__builtin_mul_overflow(n, d, &n)) return false;
  }
  *numel = n;
  return true;
}

// A non-negative JSON integer; floats, negatives, strings etc. are rejected.
bool as_uint(const nlohmann::json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const auto i = v.get<int64_t>();
    if (i < 0) return false;
    *out = static_cast<uint64_t>(i);
    return true;
  }
  return false;
}

// Throws "[safetensors] <source>: <what> (tensor '<name>')".
[[noreturn]] void fail_at(const std::string& source, const std::string& what,
                          const std::string* tensor = nullptr) {
  HETMOE_FAIL(kComponent, source, ": ", what, tensor != nullptr ? tensor_suffix(*tensor) : "");
}

// Closes a FILE* on scope exit unless released.
struct FileCloser {
  std::FILE* f = nullptr;
  ~FileCloser() {
    if (f != nullptr) std::fclose(f);
  }
};

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  const size_t size = dtype_size_or_zero(dtype);
  HETMOE_CHECK(size != 0, kComponent, "unknown dtype '", printable(dtype), "'");
  return size;
}

// ---------------------------------------------------------------------------------------------
// Writer

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Validate every view before touching the file.
  std::vector<const TensorView*> sorted;
  sorted.reserve(tensors.size());
  for (const TensorView& t : tensors) {
    HETMOE_CHECK(!t.name.empty(), kComponent, path, ": empty tensor name");
    HETMOE_CHECK(t.name != kMetadataKey, kComponent, path, ": tensor name '", kMetadataKey,
                 "' is reserved");
    const size_t esize = dtype_size_or_zero(t.dtype);
    HETMOE_CHECK(esize != 0, kComponent, path, ": unknown dtype '", printable(t.dtype), "'",
                 tensor_suffix(t.name));
    std::vector<uint64_t> dims;
    dims.reserve(t.shape.size());
    for (int64_t d : t.shape) {
      HETMOE_CHECK(d >= 0, kComponent, path, ": negative dimension ", d, " in shape",
                   tensor_suffix(t.name));
      dims.push_back(static_cast<uint64_t>(d));
    }
    uint64_t numel = 0;
    uint64_t expected = 0;
    HETMOE_CHECK(checked_numel(dims, &numel) && !__builtin_mul_overflow(numel, esize, &expected),
                 kComponent, path, ": shape element count overflows", tensor_suffix(t.name));
    HETMOE_CHECK(expected == t.nbytes, kComponent, path, ": byte count ", t.nbytes,
                 " does not match shape and dtype ", t.dtype, " (expected ", expected, ")",
                 tensor_suffix(t.name));
    HETMOE_CHECK(t.nbytes == 0 || t.data != nullptr, kComponent, path, ": null data pointer",
                 tensor_suffix(t.name));
    sorted.push_back(&t);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorView* a, const TensorView* b) { return a->name < b->name; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    HETMOE_CHECK(sorted[i - 1]->name != sorted[i]->name, kComponent, path,
                 ": duplicate tensor name", tensor_suffix(sorted[i]->name));
  }

  // Header: the same shape of JSON the Python library writes (metadata first, then per tensor
  // dtype, shape, data_offsets, compact), padded with spaces to the alignment.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const TensorView* t : sorted) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = t->dtype;
    entry["shape"] = t->shape;
    entry["data_offsets"] = {offset, offset + t->nbytes};
    header[t->name] = std::move(entry);
    offset += t->nbytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    // nlohmann refuses to serialize strings that are not valid UTF-8.
    HETMOE_FAIL(kComponent, path, ": cannot encode header (names and metadata must be UTF-8): ",
                printable(e.what(), 200));
  }
  const size_t padded = (header_text.size() + kAlignment - 1) / kAlignment * kAlignment;
  header_text.resize(padded, ' ');

  unsigned char length_bytes[8];
  const uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(n >> (8 * i));

  FileCloser file{std::fopen(path.c_str(), "wb")};
  HETMOE_CHECK(file.f != nullptr, kComponent, "cannot open '", path,
               "' for writing: ", std::strerror(errno));
  // A partial file is not a valid safetensors file: remove it on failure, but only if it is a
  // regular file (never unlink a device or FIFO the caller pointed us at).
  struct stat st {};
  const bool regular = ::fstat(::fileno(file.f), &st) == 0 && S_ISREG(st.st_mode);
  auto fail = [&](const char* what) {
    const int err = errno != 0 ? errno : EIO;
    std::fclose(file.f);
    file.f = nullptr;
    if (regular) std::remove(path.c_str());
    HETMOE_FAIL(kComponent, path, ": ", what, " failed: ", std::strerror(err));
  };
  auto write = [&](const void* data, size_t size) {
    if (size == 0) return;
    errno = 0;
    if (std::fwrite(data, 1, size, file.f) != size) fail("write");
  };
  write(length_bytes, sizeof(length_bytes));
  write(header_text.data(), header_text.size());
  for (const TensorView* t : sorted) write(t->data, t->nbytes);
  errno = 0;
  if (std::fflush(file.f) != 0) fail("flush");
  errno = 0;
  if (::fsync(::fileno(file.f)) != 0) fail("fsync");
  std::FILE* f = file.f;
  file.f = nullptr;
  errno = 0;
  if (std::fclose(f) != 0) {
    const int err = errno != 0 ? errno : EIO;
    if (regular) std::remove(path.c_str());
    HETMOE_FAIL(kComponent, path, ": close failed: ", std::strerror(err));
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

namespace {

std::vector<uint8_t> read_whole_file(const std::string& path) {
  FileCloser file{std::fopen(path.c_str(), "rb")};
  HETMOE_CHECK(file.f != nullptr, kComponent, "cannot open '", path, "': ", std::strerror(errno));
  std::vector<uint8_t> bytes;
  struct stat st {};
  if (::fstat(::fileno(file.f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    bytes.reserve(static_cast<size_t>(st.st_size));
  }
  // Read until EOF rather than trusting st_size (pipes, files that change while being read).
  constexpr size_t kChunk = size_t{1} << 20;
  for (;;) {
    const size_t old = bytes.size();
    bytes.resize(old + kChunk);
    errno = 0;
    const size_t got = std::fread(bytes.data() + old, 1, kChunk, file.f);
    bytes.resize(old + got);
    if (got < kChunk) {
      HETMOE_CHECK(!std::ferror(file.f), kComponent, "cannot read '", path,
                   "': ", std::strerror(errno != 0 ? errno : EIO));
      break;
    }
  }
  bytes.shrink_to_fit();
  return bytes;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path)
    : bytes_(read_whole_file(path)), source_(path) {
  parse(path);
}

SafetensorsFile::SafetensorsFile(std::vector<uint8_t> bytes, const std::string& source)
    : bytes_(std::move(bytes)), source_(source) {
  parse(source);
}

void SafetensorsFile::parse(const std::string& source) {
  const uint64_t file_size = bytes_.size();
  if (file_size < 8) {
    fail_at(source, "file too small for the 8-byte header length (" + std::to_string(file_size) +
                        " bytes; truncated?)");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes_[static_cast<size_t>(i)];
  if (n > file_size - 8) {
    fail_at(source, "header length " + std::to_string(n) + " exceeds the " +
                        std::to_string(file_size - 8) +
                        " bytes after it (truncated or not a safetensors file)");
  }
  if (n > kMaxHeaderBytes) {
    fail_at(source, "header length " + std::to_string(n) + " too large (limit " +
                        std::to_string(kMaxHeaderBytes) + ")");
  }
  const uint8_t* header_begin = bytes_.data() + 8;
  const uint8_t* data_begin = header_begin + n;
  const uint64_t buffer_size = file_size - 8 - n;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_begin, data_begin);
  } catch (const nlohmann::json::exception& e) {
    fail_at(source, "invalid JSON header: " + printable(e.what(), 200));
  }
  if (!header.is_object()) {
    fail_at(source, std::string("header is not a JSON object (it is ") + header.type_name() + ")");
  }

  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  // Only references into `header` are taken below: copying or dumping an untrusted (possibly
  // deeply nested) value could recurse without bound.
  for (const auto& item : header.items()) {
    const std::string& name = item.key();
    const nlohmann::json& entry = item.value();

    if (name == kMetadataKey) {
      if (entry.is_null()) continue;
      if (!entry.is_object()) fail_at(source, "__metadata__ is not a JSON object");
      for (const auto& kv : entry.items()) {
        if (!kv.value().is_string()) {
          fail_at(source,
                  "__metadata__ value for key '" + printable(kv.key()) + "' is not a string");
        }
        metadata_.emplace(kv.key(), kv.value().get<std::string>());
      }
      continue;
    }

    if (!entry.is_object()) fail_at(source, "entry is not a JSON object", &name);

    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string())
      fail_at(source, "missing string 'dtype'", &name);
    const std::string& dtype = dtype_it->get_ref<const std::string&>();
    const size_t esize = dtype_size_or_zero(dtype);
    if (esize == 0) fail_at(source, "unknown dtype '" + printable(dtype) + "'", &name);

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array())
      fail_at(source, "missing array 'shape'", &name);
    std::vector<uint64_t> dims;
    std::vector<int64_t> shape;
    dims.reserve(shape_it->size());
    shape.reserve(shape_it->size());
    for (const nlohmann::json& d : *shape_it) {
      uint64_t dim = 0;
      if (!as_uint(d, &dim) || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail_at(source, "shape must be an array of non-negative integers", &name);
      }
      dims.push_back(dim);
      shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t numel = 0;
    uint64_t expected = 0;
    if (!checked_numel(dims, &numel) || __builtin_mul_overflow(numel, esize, &expected)) {
      fail_at(source, "shape element count overflows", &name);
    }

    const auto off_it = entry.find("data_offsets");
    uint64_t begin = 0;
    uint64_t end = 0;
    if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2 ||
        !as_uint((*off_it)[0], &begin) || !as_uint((*off_it)[1], &end)) {
      fail_at(source, "data_offsets must be two non-negative integers", &name);
    }
    if (begin > end || end > buffer_size) {
      fail_at(source,
              "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  "] out of range of the " + std::to_string(buffer_size) + "-byte data buffer",
              &name);
    }
    if (end - begin != expected) {
      fail_at(source,
              "byte count " + std::to_string(end - begin) + " does not match shape and dtype " +
                  dtype + " (expected " + std::to_string(expected) + ")",
              &name);
    }

    TensorView view;
    view.name = name;
    view.dtype = dtype;
    view.shape = std::move(shape);
    view.data = data_begin + begin;
    view.nbytes = static_cast<size_t>(end - begin);
    const auto inserted = tensors_.emplace(name, std::move(view));
    spans.push_back({begin, end, &inserted.first->first});
  }

  // Non-empty byte ranges must not overlap (empty tensors occupy no bytes).
  spans.erase(
      std::remove_if(spans.begin(), spans.end(), [](const Span& s) { return s.begin == s.end; }),
      spans.end());
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end) {
      fail_at(source, "data overlaps tensor '" + printable(*spans[i - 1].name) + "'",
              spans[i].name);
    }
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return tensors_.find(name) != tensors_.end();
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  const auto it = tensors_.find(name);
  HETMOE_CHECK(it != tensors_.end(), kComponent, source_, ": no tensor named '", printable(name),
               "'");
  return it->second;
}

}  // namespace hetmoe
