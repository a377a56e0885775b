// prepare_dataset(): text files -> tokens.bin (uint16 LE) + index.json, with a deterministic
// per-document train/val split.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hetmoe/core/error.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/data/tokenizer.h"

namespace fs = std::filesystem;

namespace hetmoe {

uint64_t fnv1a64(const void* data, size_t size, uint64_t seed) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint64_t h = seed;
  for (size_t i = 0; i < size; ++i) {
    h ^= bytes[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

namespace {

constexpr const char* kComponent = "data";
constexpr size_t kBinaryProbeBytes = 8192;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform draw in [0,1) for document `ordinal`; a document goes to val when it is < val_fraction.
double split_draw(uint64_t seed, uint64_t ordinal) {
  const uint64_t h = splitmix64(splitmix64(seed ^ 0x6865746d6f652d76ULL) ^ ordinal);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

bool is_blank(const char* begin, const char* end) {
  for (const char* p = begin; p != end; ++p) {
    switch (*p) {
      case ' ':
      case '\t':
      case '\n':
      case '\r':
      case '\v':
      case '\f':
        break;
      default:
        return false;
    }
  }
  return true;
}

std::string errno_text(int err) {
  return std::strerror(err);
}

struct Candidate {
  fs::path canonical;
};

// Collects the files under the inputs in a deterministic order, deduplicated by canonical path.
class FileCollector {
 public:
  explicit FileCollector(std::set<fs::path> exclude) : exclude_(std::move(exclude)) {}

  void add_input(const std::string& input) {
    std::error_code ec;
    const fs::path path(input);
    const fs::file_status st = fs::status(path, ec);
    if (st.type() == fs::file_type::not_found ||
        ec == std::make_error_code(std::errc::no_such_file_or_directory)) {
      HETMOE_FAIL(kComponent, "input '", input, "' does not exist");
    }
    if (ec) HETMOE_FAIL(kComponent, "cannot access input '", input, "': ", ec.message());
    if (fs::is_directory(st)) {
      walk(path);
    } else if (fs::is_regular_file(st)) {
      add_file(path);
    } else {
      HETMOE_FAIL(kComponent, "input '", input, "' is not a regular file or directory");
    }
  }

  const std::vector<fs::path>& files() const { return files_; }

 private:
  void walk(const fs::path& dir) {
    std::error_code ec;
    const fs::path canonical = fs::canonical(dir, ec);
    if (ec)
      HETMOE_FAIL(kComponent, "cannot resolve directory '", dir.string(), "': ", ec.message());
    if (!visited_dirs_.insert(canonical).second) return;  // symlink cycle or repeated input

    std::vector<fs::path> entries;
    fs::directory_iterator it(dir, ec), end;
    if (ec) HETMOE_FAIL(kComponent, "cannot list directory '", dir.string(), "': ", ec.message());
    for (; it != end; it.increment(ec)) {
      if (ec) break;
      entries.push_back(it->path());
    }
    if (ec) HETMOE_FAIL(kComponent, "cannot list directory '", dir.string(), "': ", ec.message());
    std::sort(entries.begin(), entries.end(), [](const fs::path& a, const fs::path& b) {
      return a.filename().native() < b.filename().native();
    });

    for (const fs::path& entry : entries) {
      std::error_code sec;
      const fs::file_status st = fs::status(entry, sec);  // follows symlinks
      if (sec) continue;                                  // dangling symlink or vanished entry
      if (fs::is_directory(st)) {
        walk(entry);
      } else if (fs::is_regular_file(st)) {
        add_file(entry);
      }
      // sockets, fifos, devices: not text sources
    }
  }

  void add_file(const fs::path& file) {
    std::error_code ec;
    fs::path canonical = fs::canonical(file, ec);
    if (ec) HETMOE_FAIL(kComponent, "cannot resolve '", file.string(), "': ", ec.message());
    if (exclude_.count(canonical)) return;  // the dataset's own output files
    if (seen_files_.insert(canonical).second) files_.push_back(std::move(canonical));
  }

  std::set<fs::path> exclude_;
  std::set<fs::path> visited_dirs_;
  std::set<fs::path> seen_files_;
  std::vector<fs::path> files_;
};

// Reads a file as text. Returns false, having read only its head, when a NUL byte in the first
// kBinaryProbeBytes marks it as binary.
bool read_text_file(const fs::path& path, std::string& text) {
  std::ifstream in(path, std::ios::binary);
  if (!in) HETMOE_FAIL(kComponent, "cannot open '", path.string(), "': ", errno_text(errno));
  text.assign(kBinaryProbeBytes, '\0');
  in.read(&text[0], static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (in.bad()) HETMOE_FAIL(kComponent, "cannot read '", path.string(), "'");
  if (text.find('\0') != std::string::npos) return false;
  if (in) {  // more to come
    std::ostringstream rest;
    rest << in.rdbuf();
    if (in.bad()) HETMOE_FAIL(kComponent, "cannot read '", path.string(), "'");
    text += std::move(rest).str();
  }
  return true;
}

// Splits a file's text into documents (byte ranges). With a separator, a line that is exactly
// the separator (ignoring a trailing '\r') ends the current document and is itself dropped.
std::vector<std::pair<size_t, size_t>> split_documents(const std::string& text,
                                                       const std::string& separator) {
  std::vector<std::pair<size_t, size_t>> docs;  // [begin, end)
  auto emit = [&](size_t begin, size_t end) {
    if (!is_blank(text.data() + begin, text.data() + end)) docs.emplace_back(begin, end);
  };
  if (separator.empty()) {
    emit(0, text.size());
    return docs;
  }
  size_t doc_begin = 0;
  size_t line_begin = 0;
  while (line_begin < text.size()) {
    const size_t nl = text.find('\n', line_begin);
    const size_t line_end = nl == std::string::npos ? text.size() : nl;
    size_t content_end = line_end;
    if (content_end > line_begin && text[content_end - 1] == '\r') --content_end;
    const size_t next = nl == std::string::npos ? text.size() : nl + 1;
    if (content_end - line_begin == separator.size() &&
        text.compare(line_begin, separator.size(), separator) == 0) {
      emit(doc_begin, line_begin);
      doc_begin = next;
    }
    line_begin = next;
  }
  emit(doc_begin, text.size());
  return docs;
}

// Output file written to "<name>.tmp" and renamed into place on commit; removed otherwise.
class TempOutput {
 public:
  explicit TempOutput(fs::path final_path)
      : final_(std::move(final_path)), tmp_(final_.string() + ".tmp") {
    file_ = std::fopen(tmp_.c_str(), "wb");
    if (!file_) HETMOE_FAIL(kComponent, "cannot write '", tmp_.string(), "': ", errno_text(errno));
  }
  ~TempOutput() {
    if (file_) std::fclose(file_);
    if (!committed_) {
      std::error_code ec;
      fs::remove(tmp_, ec);
    }
  }
  TempOutput(const TempOutput&) = delete;
  TempOutput& operator=(const TempOutput&) = delete;

  void write(const void* data, size_t size) {
    if (size == 0) return;
    if (std::fwrite(data, 1, size, file_) != size) {
      HETMOE_FAIL(kComponent, "cannot write '", tmp_.string(), "': ", errno_text(errno));
    }
  }

  // Flushes to disk and closes; the rename happens in commit().
  void close() {
    bool ok = std::fflush(file_) == 0 && ::fsync(fileno(file_)) == 0;
    const int err = errno;
    ok = (std::fclose(file_) == 0) && ok;
    file_ = nullptr;
    if (!ok) HETMOE_FAIL(kComponent, "cannot write '", tmp_.string(), "': ", errno_text(err));
  }

  void commit() {
    if (file_) close();
    std::error_code ec;
    fs::rename(tmp_, final_, ec);
    if (ec) {
      HETMOE_FAIL(kComponent, "cannot rename '", tmp_.string(), "' to '", final_.string(),
                  "': ", ec.message());
    }
    committed_ = true;
  }

 private:
  fs::path final_;
  fs::path tmp_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

void append_tokens_le(const std::vector<int32_t>& ids, std::vector<unsigned char>& out) {
  const size_t old = out.size();
  out.resize(old + 2 * ids.size());
  unsigned char* p = out.data() + old;
  for (int32_t id : ids) {
    *p++ = static_cast<unsigned char>(id & 0xff);
    *p++ = static_cast<unsigned char>((id >> 8) & 0xff);
  }
}

std::string json_string(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

PrepareSummary prepare_dataset(const PrepareOptions& options) {
  HETMOE_CHECK(!options.inputs.empty(), kComponent, "no inputs given");
  HETMOE_CHECK(!options.out_dir.empty(), kComponent, "no output directory given");
  HETMOE_CHECK(std::isfinite(options.val_fraction) && options.val_fraction >= 0.0 &&
                   options.val_fraction < 1.0,
               kComponent, "val_fraction must be in [0, 1), got ", options.val_fraction);
  HETMOE_CHECK(options.separator.find_first_of("\r\n") == std::string::npos, kComponent,
               "the document separator must be a single line of text");

  // The dataset's own files are excluded from the walk, so re-preparing into a directory under
  // an input never reads the previous index.json back in as text.
  std::error_code ec;
  std::set<fs::path> exclude;
  for (const char* name : {"index.json", "tokens.bin", "index.json.tmp", "tokens.bin.tmp"}) {
    fs::path p = fs::weakly_canonical(fs::path(options.out_dir) / name, ec);
    if (!ec) exclude.insert(std::move(p));
  }

  FileCollector collector(std::move(exclude));
  for (const std::string& input : options.inputs) collector.add_input(input);

  const fs::path out_dir(options.out_dir);
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir)) {
    HETMOE_FAIL(kComponent, "cannot create output directory '", options.out_dir,
                "': ", ec ? ec.message() : std::string("not a directory"));
  }

  const ByteTokenizer tokenizer;
  TempOutput tokens_out(out_dir / "tokens.bin");

  // Train documents stream straight to tokens.bin.tmp, except the most recent one, which is held
  // back so it can still move to val if no document draws val. Val documents are buffered and
  // appended after the train ones.
  std::vector<unsigned char> pending;  // most recent train document, not yet written
  int64_t pending_len = -1;            // its token count; -1 when none
  std::vector<unsigned char> val_bytes;
  std::vector<int64_t> train_lengths, val_lengths;
  uint64_t checksum = 0xcbf29ce484222325ULL;
  int64_t ordinal = 0;
  std::vector<std::string> sources;
  PrepareSummary summary;

  auto flush_pending = [&]() {
    if (pending_len < 0) return;
    tokens_out.write(pending.data(), pending.size());
    checksum = fnv1a64(pending.data(), pending.size(), checksum);
    train_lengths.push_back(pending_len);
    pending.clear();
    pending_len = -1;
  };

  std::vector<unsigned char> doc_bytes;
  std::string text;
  for (const fs::path& file : collector.files()) {
    if (!read_text_file(file, text) || text.empty()) continue;  // binary or empty
    const auto docs = split_documents(text, options.separator);
    if (docs.empty()) continue;
    sources.push_back(file.string());
    ++summary.num_files;
    for (const auto& [begin, end] : docs) {
      std::vector<int32_t> ids = tokenizer.encode(text.substr(begin, end - begin));
      ids.push_back(ByteTokenizer::kEndOfDocument);
      const bool to_val =
          split_draw(options.seed, static_cast<uint64_t>(ordinal)) < options.val_fraction;
      ++ordinal;
      if (to_val) {
        append_tokens_le(ids, val_bytes);
        val_lengths.push_back(static_cast<int64_t>(ids.size()));
      } else {
        flush_pending();
        doc_bytes.clear();
        append_tokens_le(ids, doc_bytes);
        pending.swap(doc_bytes);
        pending_len = static_cast<int64_t>(ids.size());
      }
    }
  }

  if (ordinal == 0) {
    std::string joined;
    for (const std::string& input : options.inputs)
      joined += (joined.empty() ? "'" : ", '") + input + "'";
    HETMOE_FAIL(kComponent, "no text found in ", joined,
                " (empty, whitespace-only and binary files are skipped)");
  }

  // Each split gets at least one document when there are two or more and val is requested; a
  // lone document always trains.
  const bool want_val = options.val_fraction > 0.0 && ordinal >= 2;
  if (want_val && val_lengths.empty()) {
    // Nothing drew val: the last document (still held back) goes there.
    val_bytes.swap(pending);
    val_lengths.push_back(pending_len);
    pending.clear();
    pending_len = -1;
  } else if (!val_lengths.empty() && (!want_val || (train_lengths.empty() && pending_len < 0))) {
    // Everything drew val (or there is a single document): the first val document trains.
    const size_t first_bytes = static_cast<size_t>(val_lengths.front()) * 2;
    pending.assign(val_bytes.begin(), val_bytes.begin() + first_bytes);
    pending_len = val_lengths.front();
    val_bytes.erase(val_bytes.begin(), val_bytes.begin() + first_bytes);
    val_lengths.erase(val_lengths.begin());
  }
  flush_pending();
  tokens_out.write(val_bytes.data(), val_bytes.size());
  checksum = fnv1a64(val_bytes.data(), val_bytes.size(), checksum);

  for (int64_t n : train_lengths) summary.train_tokens += n;
  for (int64_t n : val_lengths) summary.val_tokens += n;
  summary.num_documents = ordinal;
  const int64_t num_tokens = summary.train_tokens + summary.val_tokens;

  // index.json: one field per line, the (long) document table last.
  char checksum_text[32];
  std::snprintf(checksum_text, sizeof checksum_text, "fnv1a64:%016llx",
                static_cast<unsigned long long>(checksum));
  std::string index;
  index += "{\n";
  index += "  \"magic\": \"hetmoe-dataset\",\n";
  index += "  \"version\": 1,\n";
  index += "  \"dtype\": \"uint16\",\n";
  index += "  \"tokenizer\": \"byte\",\n";
  index += "  \"vocab_size\": " + std::to_string(tokenizer.vocab_size()) + ",\n";
  index += "  \"num_tokens\": " + std::to_string(num_tokens) + ",\n";
  index += "  \"splits\": {\"train\": [0, " + std::to_string(summary.train_tokens) +
           "], \"val\": [" + std::to_string(summary.train_tokens) + ", " +
           std::to_string(num_tokens) + "]},\n";
  index += "  \"checksum\": \"" + std::string(checksum_text) + "\",\n";
  index += "  \"sources\": [";
  for (size_t i = 0; i < sources.size(); ++i) {
    index += (i ? ",\n    " : "\n    ") + json_string(sources[i]);
  }
  index += "\n  ],\n";
  index += "  \"documents\": [";
  int64_t start = 0;
  bool first = true;
  for (const auto* lengths : {&train_lengths, &val_lengths}) {
    for (int64_t n : *lengths) {
      index += first ? "\n    [" : ",\n    [";
      index += std::to_string(start) + ", " + std::to_string(n) + "]";
      start += n;
      first = false;
    }
  }
  index += "\n  ]\n}\n";

  TempOutput index_out(out_dir / "index.json");
  index_out.write(index.data(), index.size());
  index_out.close();
  tokens_out.close();

  // Retire the old index first, so a reader never pairs it with the new tokens.bin.
  fs::remove(out_dir / "index.json", ec);
  tokens_out.commit();
  index_out.commit();
  return summary;
}

}  // namespace hetmoe
