// prepare_dataset(): text files -> tokens.bin (uint16 LE) + index.json, with a deterministic
// per-document train/val split.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
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
constexpr size_t kReadChunkBytes = size_t{1} << 20;
constexpr size_t kWriteChunkBytes = size_t{1} << 16;
constexpr const char* kIndexName = "index.json";
constexpr const char* kTokensName = "tokens.bin";

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

// The dataset's own files and prepare's temporaries ("<name>.tmp.*", and the fixed
// "<name>.tmp" of older versions), which the walk must never read back in as text.
bool is_output_name(const std::string& name) {
  for (const std::string own : {kIndexName, kTokensName}) {
    if (name == own || name.rfind(own + ".tmp", 0) == 0) return true;
  }
  return false;
}

// Collects the files under the inputs in a deterministic order, deduplicated by canonical path,
// leaving out the dataset files in the output directory.
class FileCollector {
 public:
  struct Source {
    fs::path path;         // canonical
    std::string named_as;  // the input that names this file itself; empty if found by a walk
  };

  explicit FileCollector(fs::path out_dir) : out_dir_(std::move(out_dir)) {}

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
      add_file(path, input);
    } else {
      HETMOE_FAIL(kComponent, "input '", input, "' is not a regular file or directory");
    }
  }

  const std::vector<Source>& files() const { return files_; }

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
        add_file(entry, "");
      }
      // sockets, fifos, devices: not text sources
    }
  }

  void add_file(const fs::path& file, const std::string& named_as) {
    std::error_code ec;
    fs::path canonical = fs::canonical(file, ec);
    if (ec) HETMOE_FAIL(kComponent, "cannot resolve '", file.string(), "': ", ec.message());
    if (canonical.parent_path() == out_dir_ && is_output_name(canonical.filename().string()))
      return;
    const auto [it, added] = seen_files_.emplace(canonical, files_.size());
    if (added) {
      files_.push_back({std::move(canonical), named_as});
    } else if (files_[it->second].named_as.empty()) {
      files_[it->second].named_as = named_as;
    }
  }

  fs::path out_dir_;
  std::set<fs::path> visited_dirs_;
  std::map<fs::path, size_t> seen_files_;  // -> index in files_
  std::vector<Source> files_;
};

// Reads a file as text into `text`, reusing its buffer. Returns false, having read only its head,
// when a NUL byte in the first kBinaryProbeBytes marks it as binary. The buffer is reserved at the
// file's size, so a large file is held once (no stream buffer and concatenated copy).
bool read_text_file(const fs::path& path, std::string& text) {
  std::ifstream in(path, std::ios::binary);
  if (!in) HETMOE_FAIL(kComponent, "cannot open '", path.string(), "': ", errno_text(errno));
  text.resize(kBinaryProbeBytes);
  in.read(&text[0], static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (in.bad()) HETMOE_FAIL(kComponent, "cannot read '", path.string(), "'");
  if (text.find('\0') != std::string::npos) return false;
  if (!in) return true;  // ended within the probe

  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > text.size()) text.reserve(static_cast<size_t>(size));
  while (in.peek() != std::char_traits<char>::eof()) {
    // Fill the reserved room exactly; grow only if the file grew meanwhile.
    const size_t room = text.capacity() - text.size();
    const size_t chunk = room > 0 ? std::min(room, kReadChunkBytes) : kReadChunkBytes;
    const size_t old = text.size();
    text.resize(old + chunk);
    in.read(&text[old], static_cast<std::streamsize>(chunk));
    text.resize(old + static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) HETMOE_FAIL(kComponent, "cannot read '", path.string(), "'");
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

// A new file "<name>.tmp.<pid>.<6 random characters>" in `dir`, created exclusively so that
// concurrent runs into one directory never share a temporary, and removed when the object goes
// unless it was renamed into place (a killed run's are removed by the next run:
// remove_stale_temporaries). It keeps the FNV-1a hash of what was written (the checksum of
// tokens.bin).
class TempFile {
 public:
  TempFile(const fs::path& dir, const std::string& name) {
    const std::string prefix =
        (dir / (name + ".tmp." + std::to_string(static_cast<long>(::getpid())) + ".")).string();
    std::string created;
    const int fd = create_unique_file(prefix, &created);
    if (fd < 0) HETMOE_FAIL(kComponent, "cannot create '", prefix, "XXXXXX': ", errno_text(errno));
    path_ = created;
    file_ = ::fdopen(fd, "w+b");
    if (!file_) {
      const int err = errno;
      ::close(fd);
      ::unlink(path_.c_str());
      HETMOE_FAIL(kComponent, "cannot open '", path_.string(), "': ", errno_text(err));
    }
  }
  ~TempFile() {
    if (file_) std::fclose(file_);
    if (!renamed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  const fs::path& path() const { return path_; }
  uint64_t hash() const { return hash_; }

  void write(const void* data, size_t size) {
    if (size == 0) return;
    if (std::fwrite(data, 1, size, file_) != size) {
      HETMOE_FAIL(kComponent, "cannot write '", path_.string(), "': ", errno_text(errno));
    }
    hash_ = fnv1a64(data, size, hash_);
  }

  // Appends everything written to this file to `dest`, through `buffer`.
  void copy_to(TempFile& dest, std::vector<unsigned char>& buffer) {
    if (std::fflush(file_) != 0 || std::fseek(file_, 0, SEEK_SET) != 0) {
      HETMOE_FAIL(kComponent, "cannot read back '", path_.string(), "': ", errno_text(errno));
    }
    size_t n = 0;
    while ((n = std::fread(buffer.data(), 1, buffer.size(), file_)) > 0)
      dest.write(buffer.data(), n);
    if (std::ferror(file_)) {
      HETMOE_FAIL(kComponent, "cannot read back '", path_.string(), "': ", errno_text(errno));
    }
  }

  // Flushes to disk and closes; the rename happens in rename_to().
  void close() {
    bool ok = std::fflush(file_) == 0 && ::fsync(fileno(file_)) == 0;
    const int err = errno;
    ok = (std::fclose(file_) == 0) && ok;
    file_ = nullptr;
    if (!ok) HETMOE_FAIL(kComponent, "cannot write '", path_.string(), "': ", errno_text(err));
  }

  void rename_to(const fs::path& target) {
    if (file_) close();
    std::error_code ec;
    fs::rename(path_, target, ec);
    if (ec) {
      HETMOE_FAIL(kComponent, "cannot rename '", path_.string(), "' to '", target.string(),
                  "': ", ec.message());
    }
    renamed_ = true;
  }

 private:
  fs::path path_;
  std::FILE* file_ = nullptr;
  uint64_t hash_ = 0xcbf29ce484222325ULL;
  bool renamed_ = false;
};

// Creates the output directory and the parents it lacks. Unless keep() is called, removes again
// those it created (each only if empty), so a failed run leaves no empty directory behind.
class CreatedDirectories {
 public:
  explicit CreatedDirectories(const fs::path& dir) {
    std::error_code ec;
    for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
      if (fs::symlink_status(p, ec).type() != fs::file_type::not_found) break;
      created_.push_back(p);  // deepest first
      if (p == p.parent_path()) break;
    }
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir)) {
      remove();
      HETMOE_FAIL(kComponent, "cannot create output directory '", dir.string(),
                  "': ", ec ? ec.message() : std::string("not a directory"));
    }
  }
  ~CreatedDirectories() {
    if (!keep_) remove();
  }
  CreatedDirectories(const CreatedDirectories&) = delete;
  CreatedDirectories& operator=(const CreatedDirectories&) = delete;
  void keep() { keep_ = true; }

 private:
  void remove() {
    for (const fs::path& p : created_) ::rmdir(p.c_str());  // fails, harmlessly, if not empty
  }
  std::vector<fs::path> created_;
  bool keep_ = false;
};

// Removes the temporaries of runs that were killed before they could (their pid no longer runs),
// and the fixed-name ones of older versions. Another live run's are left alone.
void remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    for (const std::string own : {kIndexName, kTokensName}) {
      const std::string prefix = own + ".tmp";
      if (name.rfind(prefix, 0) != 0) continue;
      bool stale = name == prefix;
      if (name.size() > prefix.size() + 1 && name[prefix.size()] == '.') {
        const long pid = std::strtol(name.c_str() + prefix.size() + 1, nullptr, 10);
        stale = pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
      }
      if (stale) ::unlink(it->path().c_str());
    }
  }
}

// Both targets of the commit must be files (or absent) before the first rename: a directory in
// the way of index.json would otherwise fail its rename after tokens.bin had replaced the old.
void check_replaceable(const fs::path& dir) {
  for (const char* name : {kTokensName, kIndexName}) {
    std::error_code ec;
    const fs::file_type type = fs::status(dir / name, ec).type();
    if (type != fs::file_type::not_found && type != fs::file_type::none &&
        type != fs::file_type::regular) {
      HETMOE_FAIL(kComponent, "cannot replace '", (dir / name).string(),
                  "': it is not a regular file");
    }
  }
}

// Refuses an output directory that already holds a dataset file, unless overwriting.
void refuse_existing_dataset(const fs::path& dir) {
  for (const char* name : {kIndexName, kTokensName}) {
    std::error_code ec;
    const fs::file_type type = fs::symlink_status(dir / name, ec).type();
    if (type != fs::file_type::not_found && type != fs::file_type::none) {
      HETMOE_FAIL(kComponent, "output directory '", dir.string(), "' already holds ", name,
                  "; pass --overwrite to replace its index.json and tokens.bin");
    }
  }
}

// Writes a document's token ids (the byte tokenizer's: byte b is id b, then the end-of-document
// id) to `out` as uint16 little-endian, a buffer at a time; returns the token count.
int64_t write_document(const char* begin, const char* end, std::vector<unsigned char>& buffer,
                       TempFile& out) {
  const size_t chunk = buffer.size() / 2;
  for (const char* p = begin; p != end;) {
    const size_t n = std::min(chunk, static_cast<size_t>(end - p));
    for (size_t i = 0; i < n; ++i) {
      buffer[2 * i] = static_cast<unsigned char>(p[i]);
      buffer[2 * i + 1] = 0;
    }
    out.write(buffer.data(), 2 * n);
    p += n;
  }
  const unsigned char eod[2] = {static_cast<unsigned char>(ByteTokenizer::kEndOfDocument & 0xff),
                                static_cast<unsigned char>(ByteTokenizer::kEndOfDocument >> 8)};
  out.write(eod, sizeof eod);
  return static_cast<int64_t>(end - begin) + 1;
}

std::string json_string(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// index.json: one field per line, the (long) document table last.
std::string index_text(const std::vector<int64_t>& lengths, const PrepareSummary& summary,
                       uint64_t checksum, const std::vector<std::string>& sources) {
  const int64_t num_tokens = summary.train_tokens + summary.val_tokens;
  char checksum_text[32];
  std::snprintf(checksum_text, sizeof checksum_text, "fnv1a64:%016llx",
                static_cast<unsigned long long>(checksum));
  std::string index;
  index += "{\n";
  index += "  \"magic\": \"hetmoe-dataset\",\n";
  index += "  \"version\": 1,\n";
  index += "  \"dtype\": \"uint16\",\n";
  index += "  \"tokenizer\": \"byte\",\n";
  index += "  \"vocab_size\": " + std::to_string(ByteTokenizer::kVocabSize) + ",\n";
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
  for (size_t i = 0; i < lengths.size(); ++i) {
    index += i ? ",\n    [" : "\n    [";
    index += std::to_string(start) + ", " + std::to_string(lengths[i]) + "]";
    start += lengths[i];
  }
  index += "\n  ]\n}\n";
  return index;
}

// prepare_dataset() once the options are checked. `reading` names the input file being read
// while one is, for the out-of-memory message.
PrepareSummary prepare_checked(const PrepareOptions& options, std::string& reading) {
  const fs::path out_dir(options.out_dir);
  std::error_code ec;
  const fs::path out_canonical = fs::weakly_canonical(out_dir, ec);
  FileCollector collector(ec ? out_dir.lexically_normal() : out_canonical);
  for (const std::string& input : options.inputs) collector.add_input(input);

  if (!options.overwrite) refuse_existing_dataset(out_dir);
  CreatedDirectories created(out_dir);
  remove_stale_temporaries(out_dir);

  // Train documents stream straight to the tokens file; val documents to a second temporary,
  // appended after the train ones at the end. Moving a document between the splits later only
  // moves the boundary: the moved document is always the one next to it.
  TempFile tokens_out(out_dir, kTokensName);
  std::optional<TempFile> val_out;
  std::vector<unsigned char> buffer(kWriteChunkBytes);
  std::vector<int64_t> train_lengths, val_lengths;
  std::vector<std::string> sources;
  int64_t ordinal = 0;
  PrepareSummary summary;

  std::string text;
  for (const FileCollector::Source& source : collector.files()) {
    reading = source.path.string();
    if (!read_text_file(source.path, text)) {
      HETMOE_CHECK(source.named_as.empty(), kComponent, "input '", source.named_as,
                   "' looks binary (a NUL byte in its first ", kBinaryProbeBytes,
                   " bytes); only text files can be prepared");
      continue;
    }
    const auto docs = split_documents(text, options.separator);
    if (docs.empty()) continue;  // empty or whitespace only
    sources.push_back(source.path.string());
    ++summary.num_files;
    for (const auto& [begin, end] : docs) {
      const bool to_val =
          split_draw(options.seed, static_cast<uint64_t>(ordinal)) < options.val_fraction;
      ++ordinal;
      if (to_val && !val_out) val_out.emplace(out_dir, kTokensName);
      const int64_t n = write_document(text.data() + begin, text.data() + end, buffer,
                                       to_val ? *val_out : tokens_out);
      (to_val ? val_lengths : train_lengths).push_back(n);
    }
  }
  reading.clear();
  text = std::string();

  if (ordinal == 0) {
    std::string joined;
    for (const std::string& input : options.inputs)
      joined += (joined.empty() ? "'" : ", '") + input + "'";
    HETMOE_FAIL(kComponent, "no text found in ", joined,
                " (empty, whitespace-only and binary files are skipped)");
  }
  if (val_out) val_out->copy_to(tokens_out, buffer);

  // File order: train documents, then val documents. Documents [0, train_docs) train.
  std::vector<int64_t> lengths = std::move(train_lengths);
  size_t train_docs = lengths.size();
  lengths.insert(lengths.end(), val_lengths.begin(), val_lengths.end());
  if (options.val_fraction > 0.0 && lengths.size() == 1) {
    // One document: val is the last val_fraction of its tokens (at least one, leaving one).
    const int64_t n = lengths[0];
    const int64_t val =
        std::clamp<int64_t>(std::llround(options.val_fraction * static_cast<double>(n)), 1, n - 1);
    lengths = {n - val, val};
    train_docs = 1;
    summary.val_inside_document = true;
  } else if (options.val_fraction > 0.0 && train_docs == lengths.size()) {
    --train_docs;  // nothing drew val: the last document goes there
  } else if (train_docs == 0) {
    train_docs = 1;  // everything drew val: the first document trains
  }
  for (size_t i = 0; i < lengths.size(); ++i)
    (i < train_docs ? summary.train_tokens : summary.val_tokens) += lengths[i];
  summary.num_documents = ordinal;

  TempFile index_out(out_dir, kIndexName);
  const std::string index = index_text(lengths, summary, tokens_out.hash(), sources);
  index_out.write(index.data(), index.size());
  index_out.close();
  tokens_out.close();

  // tokens.bin first: a reader that opens in between sees the old index with the new tokens and
  // fails their size or checksum check, never a stale index taken for the new data.
  {
    // Concurrent runs commit one at a time, so the last one leaves its own tokens.bin and
    // index.json, never one of each. Where flock is unsupported the commit runs unlocked, and
    // the loader's size and checksum checks still catch a mixed pair.
    const DirectoryLock lock(out_dir.string(), DirectoryLock::Wait::Yes);
    if (!options.overwrite) refuse_existing_dataset(out_dir);  // another run committed meanwhile
    check_replaceable(out_dir);
    tokens_out.rename_to(out_dir / kTokensName);
    index_out.rename_to(out_dir / kIndexName);
    lock.sync();
  }
  created.keep();
  return summary;
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
  HETMOE_CHECK(options.tokenizer == "byte", kComponent, "tokenizer '", options.tokenizer,
               "' is not one prepare writes (only 'byte')");

  std::string reading;
  try {
    return prepare_checked(options, reading);
  } catch (const std::bad_alloc&) {
    if (reading.empty()) {
      HETMOE_FAIL(kComponent, "out of memory while preparing '", options.out_dir, "'");
    }
    std::error_code ec;
    const uintmax_t size = fs::file_size(reading, ec);
    HETMOE_FAIL(kComponent, "out of memory while reading '", reading, "'",
                ec ? std::string() : " (" + std::to_string(size) + " bytes)",
                "; prepare holds one input file in memory at a time: split it into smaller files");
  }
}

}  // namespace hetmoe
