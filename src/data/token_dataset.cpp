// TokenDataset: a prepared dataset directory opened read-only through mmap, validated on open,
// serving windows whose positions are a pure function of (seed, split, step, row).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "hetmoe/core/error.h"
#include "hetmoe/data/dataset.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace hetmoe {

namespace {

constexpr const char* kComponent = "data";
constexpr int64_t kSupportedVersion = 1;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Stream tags keep the train and val position sequences independent for the same seed.
uint64_t stream_tag(Split split) {
  return split == Split::Train ? 0x747261696e000001ULL : 0x76616c0000000002ULL;
}

uint64_t window_hash(uint64_t seed, Split split, uint64_t step, uint64_t row) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ stream_tag(split));
  h = splitmix64(h ^ step);
  return splitmix64(h ^ row);
}

const char* split_name(Split split) {
  return split == Split::Train ? "train" : "val";
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

// Validation helpers: each throws "[data] <index path>: ..." naming the offending field.
class IndexReader {
 public:
  IndexReader(const json& root, std::string where) : root_(root), where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& message) const {
    HETMOE_FAIL(kComponent, where_, ": ", message);
  }

  const json& field(const char* name) const {
    auto it = root_.find(name);
    if (it == root_.end()) fail(std::string("missing field \"") + name + "\"");
    return *it;
  }

  std::string string_field(const char* name) const {
    const json& v = field(name);
    if (!v.is_string()) fail(std::string("field \"") + name + "\" must be a string");
    return v.get<std::string>();
  }

  int64_t int_value(const json& v, const std::string& what) const {
    if (!v.is_number_integer()) fail(what + " must be an integer, got " + one_line(v.dump()));
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(what + " is out of range: " + v.dump());
    }
    return v.get<int64_t>();
  }

  int64_t int_field(const char* name) const {
    return int_value(field(name), std::string("field \"") + name + "\"");
  }

  // A [begin, end] pair of integers.
  std::pair<int64_t, int64_t> pair_value(const json& v, const std::string& what) const {
    if (!v.is_array() || v.size() != 2) fail(what + " must be a [begin, end] pair");
    return {int_value(v[0], what + "[0]"), int_value(v[1], what + "[1]")};
  }

 private:
  const json& root_;
  std::string where_;
};

}  // namespace

TokenDataset::TokenDataset(const std::string& dir, bool verify_checksum) : dir_(dir) {
  const fs::path index_path = fs::path(dir) / "index.json";
  const fs::path tokens_path = fs::path(dir) / "tokens.bin";
  const std::string index_name = index_path.string();
  const std::string tokens_name = tokens_path.string();

  std::error_code ec;
  const fs::file_status index_status = fs::status(index_path, ec);
  if (!fs::exists(index_status)) {
    HETMOE_FAIL(kComponent, dir, ": no index.json (run `hetmoe data prepare` first)");
  }
  if (!fs::is_regular_file(index_status))
    HETMOE_FAIL(kComponent, index_name, ": not a regular file");

  // ---- index.json -----------------------------------------------------------------------
  std::string text;
  {
    std::ifstream in(index_path, std::ios::binary);
    if (!in) HETMOE_FAIL(kComponent, index_name, ": cannot open: ", std::strerror(errno));
    std::ostringstream buf;
    buf << in.rdbuf();
    if (in.bad()) HETMOE_FAIL(kComponent, index_name, ": read error");
    text = std::move(buf).str();
  }
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    HETMOE_FAIL(kComponent, index_name, ": malformed JSON: ", one_line(e.what()));
  }

  const IndexReader index(root, index_name);
  if (!root.is_object()) index.fail("expected a JSON object at the top level");
  try {
    const std::string magic = index.string_field("magic");
    if (magic != "hetmoe-dataset") {
      index.fail("not a hetmoe dataset index (magic is \"" + one_line(magic) +
                 "\", expected \"hetmoe-dataset\")");
    }
    const int64_t version = index.int_field("version");
    if (version != kSupportedVersion) {
      index.fail("unsupported dataset version " + std::to_string(version) +
                 " (this build reads version " + std::to_string(kSupportedVersion) +
                 "; re-run `hetmoe data prepare`)");
    }
    const std::string dtype = index.string_field("dtype");
    if (dtype != "uint16")
      index.fail("unsupported dtype \"" + one_line(dtype) + "\" (expected \"uint16\")");
    tokenizer_ = index.string_field("tokenizer");
    if (tokenizer_ != "byte") {
      index.fail("unsupported tokenizer \"" + one_line(tokenizer_) + "\" (expected \"byte\")");
    }
    vocab_size_ = index.int_field("vocab_size");
    if (vocab_size_ < 1 || vocab_size_ > 65536) {
      index.fail("vocab_size " + std::to_string(vocab_size_) + " is outside [1, 65536]");
    }
    num_tokens_ = index.int_field("num_tokens");
    if (num_tokens_ < 0 || num_tokens_ > std::numeric_limits<int64_t>::max() / 2) {
      index.fail("num_tokens " + std::to_string(num_tokens_) + " is out of range");
    }

    const json& splits = index.field("splits");
    if (!splits.is_object()) index.fail("field \"splits\" must be an object");
    auto split_range = [&](const char* name) {
      auto it = splits.find(name);
      if (it == splits.end()) index.fail(std::string("missing field \"splits.") + name + "\"");
      auto [begin, end] = index.pair_value(*it, std::string("splits.") + name);
      if (begin < 0 || begin > end || end > num_tokens_) {
        index.fail(std::string("splits.") + name + " [" + std::to_string(begin) + ", " +
                   std::to_string(end) +
                   "] is not within [0, num_tokens=" + std::to_string(num_tokens_) + "]");
      }
      return std::make_pair(begin, end);
    };
    std::tie(train_begin_, train_end_) = split_range("train");
    std::tie(val_begin_, val_end_) = split_range("val");
    if (train_begin_ != 0 || train_end_ != val_begin_ || val_end_ != num_tokens_) {
      index.fail("splits are inconsistent: train [" + std::to_string(train_begin_) + ", " +
                 std::to_string(train_end_) + "] and val [" + std::to_string(val_begin_) + ", " +
                 std::to_string(val_end_) + "] must tile [0, " + std::to_string(num_tokens_) +
                 "] with train first");
    }

    // Documents tile the token range in order, and the train/val boundary falls between two.
    const json& documents = index.field("documents");
    if (!documents.is_array()) index.fail("field \"documents\" must be an array");
    int64_t expected_start = 0;
    bool boundary_seen = train_end_ == 0;
    for (size_t i = 0; i < documents.size(); ++i) {
      const std::string what = "documents[" + std::to_string(i) + "]";
      auto [start, length] = index.pair_value(documents[i], what);
      if (start != expected_start || length < 1 || length > num_tokens_ - start) {
        index.fail(what + " [" + std::to_string(start) + ", " + std::to_string(length) +
                   "] does not continue the previous document at " +
                   std::to_string(expected_start) +
                   " within num_tokens=" + std::to_string(num_tokens_));
      }
      expected_start = start + length;
      if (expected_start == train_end_) boundary_seen = true;
    }
    if (expected_start != num_tokens_) {
      index.fail("documents cover " + std::to_string(expected_start) + " tokens, num_tokens is " +
                 std::to_string(num_tokens_));
    }
    if (!boundary_seen) {
      index.fail("the train/val boundary " + std::to_string(train_end_) +
                 " falls inside a document");
    }

    const json& sources = index.field("sources");
    if (!sources.is_array()) index.fail("field \"sources\" must be an array of strings");
    for (const json& s : sources) {
      if (!s.is_string()) index.fail("field \"sources\" must be an array of strings");
    }
  } catch (const json::exception& e) {  // defensive: the checks above should pre-empt these
    index.fail(one_line(e.what()));
  }

  uint64_t expected_checksum = 0;
  {
    const std::string checksum = index.string_field("checksum");
    const std::string prefix = "fnv1a64:";
    bool ok =
        checksum.size() == prefix.size() + 16 && checksum.compare(0, prefix.size(), prefix) == 0;
    for (size_t i = prefix.size(); ok && i < checksum.size(); ++i) {
      ok = std::isxdigit(static_cast<unsigned char>(checksum[i])) != 0;
    }
    if (!ok) {
      index.fail("field \"checksum\" must look like \"fnv1a64:<16 hex digits>\", got \"" +
                 one_line(checksum) + "\"");
    }
    expected_checksum = std::strtoull(checksum.c_str() + prefix.size(), nullptr, 16);
  }

  // ---- tokens.bin -----------------------------------------------------------------------
  // O_NONBLOCK: a fifo in its place must not block the open (it is refused below).
  const int fd = ::open(tokens_name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) HETMOE_FAIL(kComponent, tokens_name, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    HETMOE_FAIL(kComponent, tokens_name, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    HETMOE_FAIL(kComponent, tokens_name, ": not a regular file",
                S_ISDIR(st.st_mode) ? " (a directory)" : "");
  }
  const uint64_t expected_bytes = static_cast<uint64_t>(num_tokens_) * 2;
  if (static_cast<uint64_t>(st.st_size) != expected_bytes) {
    ::close(fd);
    HETMOE_FAIL(kComponent, tokens_name, ": size ", static_cast<uint64_t>(st.st_size),
                " bytes, index says ", expected_bytes, " bytes (", num_tokens_,
                " tokens); the file is truncated or does not belong to this index");
  }
  if (expected_bytes > 0) {
    void* p = ::mmap(nullptr, expected_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (p == MAP_FAILED)
      HETMOE_FAIL(kComponent, tokens_name, ": mmap failed: ", std::strerror(err));
    mapping_ = p;
    mapped_bytes_ = expected_bytes;
    tokens_ = static_cast<const uint16_t*>(p);
  } else {
    ::close(fd);
  }

  if (!verify_checksum) return;

  // One pass over the bytes: checksum and token-id range together. The constructor is not
  // complete, so the destructor will not run if this throws; unmap here instead.
  const auto* bytes = static_cast<const unsigned char*>(mapping_);
  if (mapping_) ::madvise(mapping_, mapped_bytes_, MADV_SEQUENTIAL);
  uint64_t h = 0xcbf29ce484222325ULL;
  int64_t bad_pos = -1;
  int64_t bad_id = 0;
  for (int64_t i = 0; i < num_tokens_; ++i) {
    const unsigned char lo = bytes[2 * i], hi = bytes[2 * i + 1];
    h = (h ^ lo) * 0x100000001b3ULL;
    h = (h ^ hi) * 0x100000001b3ULL;
    const int64_t id = lo | (static_cast<int64_t>(hi) << 8);
    if (id >= vocab_size_ && bad_pos < 0) {
      bad_pos = i;
      bad_id = id;
    }
  }
  if (mapping_) ::madvise(mapping_, mapped_bytes_, MADV_RANDOM);

  std::string problem;
  if (h != expected_checksum) {
    char have[32], want[32];
    std::snprintf(have, sizeof have, "fnv1a64:%016llx", static_cast<unsigned long long>(h));
    std::snprintf(want, sizeof want, "fnv1a64:%016llx",
                  static_cast<unsigned long long>(expected_checksum));
    problem = std::string("checksum mismatch: index says ") + want + ", file has " + have +
              " (the file is corrupt or was modified; re-run `hetmoe data prepare`)";
  } else if (bad_pos >= 0) {
    problem = "token id " + std::to_string(bad_id) + " at position " + std::to_string(bad_pos) +
              " is out of range for vocab_size " + std::to_string(vocab_size_);
  }
  if (!problem.empty()) {
    ::munmap(mapping_, mapped_bytes_);
    mapping_ = nullptr;
    tokens_ = nullptr;
    mapped_bytes_ = 0;
    HETMOE_FAIL(kComponent, tokens_name, ": ", problem);
  }
}

TokenDataset::~TokenDataset() {
  if (mapping_) ::munmap(mapping_, mapped_bytes_);
}

int64_t TokenDataset::split_size(Split split) const {
  return split == Split::Train ? train_end_ - train_begin_ : val_end_ - val_begin_;
}

int32_t TokenDataset::token(int64_t pos) const {
  HETMOE_CHECK(pos >= 0 && pos < num_tokens_, kComponent, dir_, ": token position ", pos,
               " is out of range [0, ", num_tokens_, ")");
  const auto* bytes = static_cast<const unsigned char*>(mapping_) + 2 * pos;
  return static_cast<int32_t>(bytes[0] | (bytes[1] << 8));
}

void TokenDataset::sample_windows(Split split, int64_t batch, int64_t len, uint64_t seed,
                                  uint64_t step, int32_t* out, int64_t first) const {
  HETMOE_CHECK(first >= 0, kComponent, dir_, ": first window must be >= 0, got ", first);
  HETMOE_CHECK(batch >= 0, kComponent, dir_, ": batch must be >= 0, got ", batch);
  HETMOE_CHECK(len >= 1, kComponent, dir_, ": window length must be >= 1, got ", len);
  const int64_t size = split_size(split);
  HETMOE_CHECK(size >= len, kComponent, dir_, ": the ", split_name(split), " split has ", size,
               " tokens, fewer than the window of ", len);
  if (batch == 0) return;
  HETMOE_CHECK(out != nullptr, kComponent, dir_, ": sample_windows got a null output buffer");

  const int64_t begin = split == Split::Train ? train_begin_ : val_begin_;
  const uint64_t positions = static_cast<uint64_t>(size - len + 1);
  const auto* bytes = static_cast<const unsigned char*>(mapping_);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start =
        begin + static_cast<int64_t>(
                    window_hash(seed, split, step, static_cast<uint64_t>(first + b)) % positions);
    const unsigned char* src = bytes + 2 * start;
    int32_t* dst = out + b * len;
    int32_t worst = 0;
    for (int64_t i = 0; i < len; ++i) {
      const int32_t id = src[2 * i] | (src[2 * i + 1] << 8);
      dst[i] = id;
      worst = id > worst ? id : worst;
    }
    if (worst >= vocab_size_) {  // only reachable when opened without verification
      for (int64_t i = 0; i < len; ++i) {
        if (dst[i] >= vocab_size_) {
          HETMOE_FAIL(kComponent, (fs::path(dir_) / "tokens.bin").string(), ": token id ", dst[i],
                      " at position ", start + i, " is out of range for vocab_size ", vocab_size_);
        }
      }
    }
  }
}

}  // namespace hetmoe
