// Dataset preparation (text files -> flat binary token file + JSON index) and the memory-mapped
// loader that serves reproducible random windows from its train and val splits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hetmoe {

// On-disk layout of a prepared dataset directory:
//   tokens.bin  - uint16 little-endian token ids: all train documents, then all val documents
//   index.json  - {"magic":"hetmoe-dataset","version":1,"dtype":"uint16","tokenizer":"byte",
//                  "vocab_size":257,"num_tokens":N,"documents":[[start,length],...],
//                  "splits":{"train":[begin,end],"val":[begin,end]},"sources":[...],
//                  "checksum":"fnv1a64:<16 hex>"}
// Each document ends with the end-of-document token, except in a corpus of a single document
// split for validation: its two parts are listed as two documents, the train part without one.
struct PrepareOptions {
  // Files or directories (recursed). Binary files found in a directory are skipped; a binary file
  // named here is an error.
  std::vector<std::string> inputs;
  std::string out_dir;
  // An out_dir that already holds index.json or tokens.bin is refused unless this is set; then
  // the two are replaced (nothing else in the directory is touched).
  bool overwrite = false;
  std::string tokenizer = "byte";  // the only one prepare writes
  // Share of the documents drawn for validation. When it is > 0 neither split comes out empty: a
  // document moves between them when the draw leaves one empty, and a corpus of one document is
  // split inside, the last val_fraction of its tokens going to val. 0: no validation split.
  double val_fraction = 0.05;
  // When non-empty, a line consisting of exactly this text separates documents inside a file
  // (fortune files use "%"). Otherwise each file is one document.
  std::string separator;
  uint64_t seed = 0;  // decides which documents go to val
};

struct PrepareSummary {
  int64_t num_files = 0;
  int64_t num_documents = 0;
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  // The corpus was one document, so val is the tail of its tokens rather than whole documents.
  bool val_inside_document = false;
};

// Throws hetmoe::Error("[data] ...") naming the input on any problem (missing input, no text
// found, a binary file named as input, out_dir already holding a dataset without overwrite,
// unwritable output, val_fraction outside [0,1), out of memory). A failed run leaves the output
// directory as it was (and removes it again if it created it). Concurrent runs into one
// directory use their own temporary files; the last to finish leaves a consistent dataset.
PrepareSummary prepare_dataset(const PrepareOptions& options);

// FNV-1a 64-bit hash of a byte range (the dataset checksum).
uint64_t fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ULL);

enum class Split { Train, Val };

// Where the trainer's token windows come from. The built-in TokenDataset implements it; research
// code passes its own (synthetic tasks, other formats, streams) in TrainerOptions::data.
// Implementations must be deterministic: the same arguments always give the same windows (resume
// and data parallelism rely on it), and sample_windows may be called from any rank.
class DataSource {
 public:
  virtual ~DataSource() = default;
  // One more than the largest token id it produces; must be <= model.vocab_size.
  virtual int64_t vocab_size() const = 0;
  // Tokens in a split; the trainer needs at least train.seq_len + 1 in each.
  virtual int64_t split_size(Split split) const = 0;
  // Writes `batch` windows of `len` token ids: window b to out[b * len, (b + 1) * len). They are
  // windows first .. first + batch - 1 of micro-batch number `step` of the split, drawn with
  // `seed` (a rank of a data-parallel job asks for its slice). The trainer numbers training
  // micro-batches step * grad_accum + micro (a replayed spike batch keeps its number) and
  // validation batches 0 .. eval_batches - 1. Throws hetmoe::Error on failure.
  virtual void sample_windows(Split split, int64_t batch, int64_t len, uint64_t seed, uint64_t step,
                              int32_t* out, int64_t first = 0) const = 0;
  // A name for logs and error messages (a directory, "synthetic copy task", ...).
  virtual std::string describe() const = 0;
};

// A prepared dataset opened read-only through mmap. Validates the index (magic, version, dtype,
// sizes, checksum) on open and throws hetmoe::Error("[data] <path>: ...") on any mismatch.
class TokenDataset final : public DataSource {
 public:
  explicit TokenDataset(const std::string& dir, bool verify_checksum = true);
  ~TokenDataset() override;
  TokenDataset(const TokenDataset&) = delete;
  TokenDataset& operator=(const TokenDataset&) = delete;

  int64_t num_tokens() const { return num_tokens_; }
  int64_t split_size(Split split) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  // The index's "tokenizer" (what turned text into these ids), to compare with data.tokenizer.
  const std::string& tokenizer() const { return tokenizer_; }
  const std::string& dir() const { return dir_; }
  std::string describe() const override { return dir_; }

  // Fills out[b*(len)+i] for b in [0,batch) with `batch` windows of `len` consecutive tokens of
  // the split. Window starts are a pure function of (seed, stream, step, b): the same arguments
  // always give the same batch, which is what makes resume exact without loader state.
  // Windows first .. first+batch-1 of the step: a data-parallel rank takes its slice of the
  // global batch this way, and the union over ranks is the single-process batch.
  // Throws when the split is shorter than len.
  void sample_windows(Split split, int64_t batch, int64_t len, uint64_t seed, uint64_t step,
                      int32_t* out, int64_t first = 0) const override;

  // Token at absolute position (for tests and tools).
  int32_t token(int64_t pos) const;

 private:
  std::string dir_;
  std::string tokenizer_;
  int64_t num_tokens_ = 0;
  int64_t vocab_size_ = 0;
  int64_t train_begin_ = 0, train_end_ = 0, val_begin_ = 0, val_end_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t mapped_bytes_ = 0;
  void* mapping_ = nullptr;
};

}  // namespace hetmoe
