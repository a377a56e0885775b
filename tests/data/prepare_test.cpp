// prepare_dataset(): file discovery, document splitting, the train/val split and the on-disk
// format (checked both directly and through TokenDataset).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "hetmoe/core/error.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/data/tokenizer.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;

namespace hetmoe {
namespace {

using test_support::TempDir;

void write_file(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::vector<int32_t> read_tokens(const fs::path& path) {
  const std::string raw = read_bytes(path);
  std::vector<int32_t> ids(raw.size() / 2);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] =
        static_cast<unsigned char>(raw[2 * i]) | (static_cast<unsigned char>(raw[2 * i + 1]) << 8);
  }
  return ids;
}

nlohmann::json read_index(const fs::path& dir) {
  return nlohmann::json::parse(read_bytes(dir / "index.json"));
}

// Token ids of a document: its bytes followed by the end-of-document id.
std::vector<int32_t> doc_tokens(const std::string& text) {
  std::vector<int32_t> ids = ByteTokenizer().encode(text);
  ids.push_back(ByteTokenizer::kEndOfDocument);
  return ids;
}

std::vector<int32_t> concat_docs(const std::vector<std::string>& docs) {
  std::vector<int32_t> all;
  for (const std::string& d : docs) {
    const auto ids = doc_tokens(d);
    all.insert(all.end(), ids.begin(), ids.end());
  }
  return all;
}

// The text of each document listed in index.json, in file order (end-of-document dropped).
std::vector<std::string> documents_of(const fs::path& dir) {
  const auto index = read_index(dir);
  const auto tokens = read_tokens(dir / "tokens.bin");
  std::vector<std::string> docs;
  for (const auto& d : index["documents"]) {
    const int64_t start = d[0].get<int64_t>(), length = d[1].get<int64_t>();
    EXPECT_EQ(tokens[start + length - 1], ByteTokenizer::kEndOfDocument);
    std::string text;
    for (int64_t i = start; i < start + length - 1; ++i) {
      EXPECT_LT(tokens[i], 256) << "end-of-document inside a document at " << i;
      text.push_back(static_cast<char>(tokens[i]));
    }
    docs.push_back(text);
  }
  return docs;
}

// Messages are "[data] ..." and one line.
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

PrepareOptions options_for(std::vector<std::string> inputs, const std::string& out_dir,
                           double val_fraction = 0.0, const std::string& separator = "",
                           uint64_t seed = 0) {
  PrepareOptions o;
  o.inputs = std::move(inputs);
  o.out_dir = out_dir;
  o.val_fraction = val_fraction;
  o.separator = separator;
  o.seed = seed;
  return o;
}

// A corpus of `n` distinct one-line documents separated by "%".
std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

std::string numbered_corpus(int n) {
  std::string text;
  for (int i = 0; i < n; ++i) text += "document number " + std::to_string(i) + "\n%\n";
  return text;
}

TEST(Fnv1a64, MatchesReferenceValuesAndChains) {
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ULL);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ULL);
  EXPECT_EQ(fnv1a64("bar", 3, fnv1a64("foo", 3)), fnv1a64("foobar", 6));
}

TEST(PrepareDataset, WholeFilesRoundTripInSortedWalkOrder) {
  TempDir tmp;
  const fs::path corpus = tmp.path() / "corpus";
  write_file(corpus / "c.txt", "third file\n");
  write_file(corpus / "a.txt", "first file\nwith two lines\n");
  write_file(corpus / "sub" / "b.txt", "nested, no trailing newline");
  write_file(corpus / "B.txt", "capital sorts first\n");
  const std::string out = tmp / "out/nested/dir";  // parents are created

  const PrepareSummary s = prepare_dataset(options_for({corpus.string()}, out));
  const std::vector<std::string> docs = {"capital sorts first\n", "first file\nwith two lines\n",
                                         "third file\n", "nested, no trailing newline"};
  const std::vector<int32_t> expected = concat_docs(docs);
  EXPECT_EQ(s.num_files, 4);
  EXPECT_EQ(s.num_documents, 4);
  EXPECT_EQ(s.train_tokens, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(s.val_tokens, 0);

  EXPECT_EQ(read_tokens(fs::path(out) / "tokens.bin"), expected);
  EXPECT_EQ(documents_of(out), docs);

  const auto index = read_index(out);
  EXPECT_EQ(index["magic"], "hetmoe-dataset");
  EXPECT_EQ(index["version"], 1);
  EXPECT_EQ(index["dtype"], "uint16");
  EXPECT_EQ(index["tokenizer"], "byte");
  EXPECT_EQ(index["vocab_size"], 257);
  EXPECT_EQ(index["num_tokens"], static_cast<int64_t>(expected.size()));
  EXPECT_EQ(index["splits"]["train"], nlohmann::json::array({0, expected.size()}));
  EXPECT_EQ(index["splits"]["val"], nlohmann::json::array({expected.size(), expected.size()}));
  ASSERT_EQ(index["sources"].size(), 4u);
  EXPECT_EQ(index["sources"][0], fs::canonical(corpus / "B.txt").string());
  EXPECT_EQ(index["sources"][3], fs::canonical(corpus / "sub" / "b.txt").string());

  // No temporaries are left behind.
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"index.json", "tokens.bin"}));

  TokenDataset ds(out);
  EXPECT_EQ(ds.num_tokens(), static_cast<int64_t>(expected.size()));
  EXPECT_EQ(ds.split_size(Split::Train), static_cast<int64_t>(expected.size()));
  EXPECT_EQ(ds.split_size(Split::Val), 0);
  for (int64_t i = 0; i < ds.num_tokens(); ++i) ASSERT_EQ(ds.token(i), expected[i]) << i;
}

TEST(PrepareDataset, ChecksumIsFnv1aOfTokensBin) {
  TempDir tmp;
  write_file(tmp.path() / "in.txt", "checksum me\n");
  prepare_dataset(options_for({tmp / "in.txt"}, tmp / "out"));
  const std::string raw = read_bytes(tmp.path() / "out" / "tokens.bin");
  char want[32];
  std::snprintf(want, sizeof want, "fnv1a64:%016llx",
                static_cast<unsigned long long>(fnv1a64(raw.data(), raw.size())));
  EXPECT_EQ(read_index(tmp.path() / "out")["checksum"], want);
}

TEST(PrepareDataset, SeparatorLinesEndDocuments) {
  TempDir tmp;
  // Separator lines: "%" and "%\r" (CRLF). Not separators: "%%", " %", "% ", "x%".
  // Whitespace-only documents are dropped; text after the last separator is a document.
  const std::string text =
      "one\n"
      "%\n"
      "two\n%%\n %\n% \nx%\n"
      "%\r\n"
      "  \n\t\n"
      "%\n"
      "%\n"
      "crlf line\r\n"
      "%\r\n"
      "last, unterminated";
  write_file(tmp.path() / "f", text);
  const PrepareSummary s = prepare_dataset(options_for({tmp / "f"}, tmp / "out", 0.0, "%"));
  const std::vector<std::string> docs = {"one\n", "two\n%%\n %\n% \nx%\n", "crlf line\r\n",
                                         "last, unterminated"};
  EXPECT_EQ(s.num_files, 1);
  EXPECT_EQ(s.num_documents, 4);
  EXPECT_EQ(documents_of(tmp.path() / "out"), docs);
  EXPECT_EQ(read_tokens(tmp.path() / "out" / "tokens.bin"), concat_docs(docs));
}

TEST(PrepareDataset, FortuneStyleFilesAndMultiCharacterSeparator) {
  TempDir tmp;
  write_file(tmp.path() / "fortunes", "%\nA penny saved.\n\t-- Ben\n%\nLook up.\n%\n");
  prepare_dataset(options_for({tmp / "fortunes"}, tmp / "out", 0.0, "%"));
  EXPECT_EQ(documents_of(tmp.path() / "out"),
            (std::vector<std::string>{"A penny saved.\n\t-- Ben\n", "Look up.\n"}));

  write_file(tmp.path() / "multi", "alpha\n<END>\nbeta\n<END>\n<END>\n");
  prepare_dataset(options_for({tmp / "multi"}, tmp / "out2", 0.0, "<END>"));
  EXPECT_EQ(documents_of(tmp.path() / "out2"), (std::vector<std::string>{"alpha\n", "beta\n"}));
}

TEST(PrepareDataset, WithoutSeparatorAFileIsOneDocument) {
  TempDir tmp;
  write_file(tmp.path() / "f", "a\n%\nb\n");
  const PrepareSummary s = prepare_dataset(options_for({tmp / "f"}, tmp / "out"));
  EXPECT_EQ(s.num_documents, 1);
  EXPECT_EQ(documents_of(tmp.path() / "out"), (std::vector<std::string>{"a\n%\nb\n"}));
}

TEST(PrepareDataset, SkipsBinaryEmptyAndWhitespaceOnlyFiles) {
  TempDir tmp;
  const fs::path corpus = tmp.path() / "corpus";
  write_file(corpus / "text", "hello\n%\nworld\n");
  write_file(corpus / "text.dat", std::string("\x00\x00\x00\x02\x00\x00\x00\x0b", 8) + "%");
  write_file(corpus / "empty", "");
  write_file(corpus / "blank", " \n\n\t\n");
  // A NUL past the first 8 KiB does not make a file binary.
  write_file(corpus / "late-nul", std::string(9000, 'x') + std::string(1, '\0') + "\n");
  write_file(corpus / "exact-8k", std::string(8191, 'y') + "\n");  // exactly the probe size

  const PrepareSummary s = prepare_dataset(options_for({corpus.string()}, tmp / "out", 0.0, "%"));
  EXPECT_EQ(s.num_files, 3);
  EXPECT_EQ(s.num_documents, 4);
  EXPECT_EQ(s.train_tokens, (8192 + 1) + (9002 + 1) + (6 + 1) + (6 + 1));
  const auto sources = read_index(tmp.path() / "out")["sources"];
  EXPECT_EQ(sources, nlohmann::json::array({fs::canonical(corpus / "exact-8k").string(),
                                            fs::canonical(corpus / "late-nul").string(),
                                            fs::canonical(corpus / "text").string()}));
}

TEST(PrepareDataset, DeduplicatesSymlinksAndRepeatedInputs) {
  TempDir tmp;
  const fs::path corpus = tmp.path() / "corpus";
  write_file(corpus / "art", "a picture\n%\nanother\n");
  fs::create_symlink("art", corpus / "art.u8");
  fs::create_directories(corpus / "sub");
  fs::create_symlink("../art", corpus / "sub" / "link");
  fs::create_directory_symlink("..", corpus / "sub" / "loop");  // a cycle is harmless
  fs::create_symlink("missing", corpus / "dangling");           // ignored inside directories

  const PrepareSummary s = prepare_dataset(
      options_for({corpus.string(), (corpus / "art.u8").string(), (corpus / "art").string()},
                  tmp / "out", 0.0, "%"));
  EXPECT_EQ(s.num_files, 1);
  EXPECT_EQ(s.num_documents, 2);
  EXPECT_EQ(read_index(tmp.path() / "out")["sources"],
            nlohmann::json::array({fs::canonical(corpus / "art").string()}));
}

TEST(PrepareDataset, MissingInputIsAnError) {
  TempDir tmp;
  write_file(tmp.path() / "present", "text\n");
  const std::string missing = tmp / "nope/missing.txt";
  const std::string what = error_of([&] {
    prepare_dataset(options_for({tmp / "present", missing}, tmp / "out"));
  });
  EXPECT_NE(what.find("[data] input '" + missing + "' does not exist"), std::string::npos) << what;
  EXPECT_FALSE(fs::exists(tmp.path() / "out" / "index.json"));
}

TEST(PrepareDataset, NoTextIsAnError) {
  TempDir tmp;
  write_file(tmp.path() / "corpus" / "empty", "");
  write_file(tmp.path() / "corpus" / "bin", std::string("\0\1\2", 3));
  write_file(tmp.path() / "corpus" / "seps", "%\n%\n  \n%\n");
  const std::string what =
      error_of([&] { prepare_dataset(options_for({tmp / "corpus"}, tmp / "out", 0.1, "%")); });
  EXPECT_NE(what.find("no text found"), std::string::npos) << what;
  EXPECT_NE(what.find(tmp / "corpus"), std::string::npos) << what;
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));  // the directory it created is gone again
}

TEST(PrepareDataset, ValidatesOptions) {
  TempDir tmp;
  write_file(tmp.path() / "f", "text\n");
  for (double bad : {-0.1, 1.0, 1.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
    const std::string what =
        error_of([&] { prepare_dataset(options_for({tmp / "f"}, tmp / "out", bad)); });
    EXPECT_NE(what.find("val_fraction must be in [0, 1)"), std::string::npos) << what;
  }
  EXPECT_NE(error_of([&] { prepare_dataset(options_for({}, tmp / "out")); }).find("no inputs"),
            std::string::npos);
  EXPECT_NE(error_of([&] { prepare_dataset(options_for({tmp / "f"}, "")); }).find("output"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              prepare_dataset(options_for({tmp / "f"}, tmp / "out", 0, "a\nb"));
            }).find("separator"),
            std::string::npos);
  PrepareOptions bpe = options_for({tmp / "f"}, tmp / "out");
  bpe.tokenizer = "bpe";
  EXPECT_NE(error_of([&] { prepare_dataset(bpe); }).find("tokenizer 'bpe'"), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));
  EXPECT_NO_THROW(prepare_dataset(options_for({tmp / "f"}, tmp / "out", 0.0)));
  EXPECT_NO_THROW(prepare_dataset(options_for({tmp / "f"}, tmp / "out2", 0.999)));
}

TEST(PrepareDataset, UnwritableOutputIsAnError) {
  TempDir tmp;
  write_file(tmp.path() / "f", "text\n");
  write_file(tmp.path() / "file-not-dir", "x");
  const std::string what =
      error_of([&] { prepare_dataset(options_for({tmp / "f"}, tmp / "file-not-dir/out")); });
  EXPECT_NE(what.find("cannot create output directory"), std::string::npos) << what;
}

TEST(PrepareDataset, SplitPutsTrainDocumentsFirstThenVal) {
  TempDir tmp;
  const int n = 400;
  write_file(tmp.path() / "corpus", numbered_corpus(n));
  const PrepareSummary s =
      prepare_dataset(options_for({tmp / "corpus"}, tmp / "out", 0.25, "%", 1234));
  EXPECT_EQ(s.num_documents, n);

  const auto index = read_index(tmp.path() / "out");
  const int64_t train_end = index["splits"]["train"][1].get<int64_t>();
  EXPECT_EQ(s.train_tokens, train_end);
  EXPECT_EQ(s.train_tokens + s.val_tokens, index["num_tokens"].get<int64_t>());

  // Each split holds its documents in corpus order; together they are every document once.
  const std::vector<std::string> docs = documents_of(tmp.path() / "out");
  ASSERT_EQ(docs.size(), static_cast<size_t>(n));
  std::vector<int> train_ids, val_ids;
  int64_t pos = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    const int id = std::stoi(docs[i].substr(std::string("document number ").size()));
    EXPECT_EQ(docs[i], "document number " + std::to_string(id) + "\n");
    (pos < train_end ? train_ids : val_ids).push_back(id);
    pos += static_cast<int64_t>(docs[i].size()) + 1;
  }
  EXPECT_TRUE(std::is_sorted(train_ids.begin(), train_ids.end()));
  EXPECT_TRUE(std::is_sorted(val_ids.begin(), val_ids.end()));
  std::set<int> all(train_ids.begin(), train_ids.end());
  all.insert(val_ids.begin(), val_ids.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(n));
  // About a quarter went to val (binomial, sd ~ 8.7).
  EXPECT_GT(val_ids.size(), 60u);
  EXPECT_LT(val_ids.size(), 140u);

  TokenDataset ds(tmp / "out");
  EXPECT_EQ(ds.split_size(Split::Train), s.train_tokens);
  EXPECT_EQ(ds.split_size(Split::Val), s.val_tokens);
}

TEST(PrepareDataset, SplitIsDeterministicGivenSeed) {
  TempDir tmp;
  write_file(tmp.path() / "corpus", numbered_corpus(300));
  prepare_dataset(options_for({tmp / "corpus"}, tmp / "a", 0.2, "%", 7));
  prepare_dataset(options_for({tmp / "corpus"}, tmp / "b", 0.2, "%", 7));
  prepare_dataset(options_for({tmp / "corpus"}, tmp / "c", 0.2, "%", 8));
  EXPECT_EQ(read_bytes(tmp.path() / "a" / "tokens.bin"),
            read_bytes(tmp.path() / "b" / "tokens.bin"));
  EXPECT_EQ(read_bytes(tmp.path() / "a" / "index.json"),
            read_bytes(tmp.path() / "b" / "index.json"));
  EXPECT_NE(read_bytes(tmp.path() / "a" / "tokens.bin"),
            read_bytes(tmp.path() / "c" / "tokens.bin"));
  // Re-preparing into an existing directory with overwrite replaces the dataset.
  PrepareOptions again = options_for({tmp / "corpus"}, tmp / "a", 0.2, "%", 8);
  again.overwrite = true;
  prepare_dataset(again);
  EXPECT_EQ(read_bytes(tmp.path() / "a" / "index.json"),
            read_bytes(tmp.path() / "c" / "index.json"));
}

TEST(PrepareDataset, EverySplitGetsADocumentWhenPossible) {
  TempDir tmp;
  write_file(tmp.path() / "two", "first\n%\nsecond\n");
  for (uint64_t seed = 0; seed < 20; ++seed) {
    for (double vf : {0.001, 0.5, 0.999}) {
      const std::string out = tmp / ("out-" + std::to_string(seed));
      PrepareOptions o = options_for({tmp / "two"}, out, vf, "%", seed);
      o.overwrite = true;
      const PrepareSummary s = prepare_dataset(o);
      EXPECT_EQ(s.num_documents, 2);
      EXPECT_GT(s.train_tokens, 0) << "seed " << seed << " val_fraction " << vf;
      EXPECT_GT(s.val_tokens, 0) << "seed " << seed << " val_fraction " << vf;
      TokenDataset ds(out);  // the moved document keeps the file consistent
      EXPECT_EQ(ds.split_size(Split::Train) + ds.split_size(Split::Val), ds.num_tokens());
      std::vector<std::string> docs = documents_of(out);
      std::sort(docs.begin(), docs.end());
      EXPECT_EQ(docs, (std::vector<std::string>{"first\n", "second\n"}));
    }
  }
}

// A corpus of one document cannot be split by documents: val is the tail of its tokens, listed
// as a document of its own so that the format (and older readers) stay as they were.
TEST(PrepareDataset, ASingleDocumentIsSplitInsideForValidation) {
  TempDir tmp;
  const std::string text = std::string(99, 'x');  // 100 tokens with the end-of-document
  write_file(tmp.path() / "one", text);
  struct Case {
    double val_fraction;
    int64_t val_tokens;
  };
  for (const Case c : {Case{0.1, 10}, Case{0.001, 1}, Case{0.5, 50}, Case{0.999, 99}}) {
    for (uint64_t seed : {0, 1, 2}) {
      SCOPED_TRACE("val_fraction " + std::to_string(c.val_fraction) + " seed " +
                   std::to_string(seed));
      const std::string out =
          tmp / ("out-" + std::to_string(c.val_fraction) + "-" + std::to_string(seed));
      const PrepareSummary s =
          prepare_dataset(options_for({tmp / "one"}, out, c.val_fraction, "", seed));
      EXPECT_TRUE(s.val_inside_document);
      EXPECT_EQ(s.num_documents, 1);
      EXPECT_EQ(s.val_tokens, c.val_tokens);
      EXPECT_EQ(s.train_tokens, 100 - c.val_tokens);
      EXPECT_EQ(read_tokens(fs::path(out) / "tokens.bin"), doc_tokens(text));
      const auto index = read_index(out);
      EXPECT_EQ(index["documents"],
                nlohmann::json::array({nlohmann::json::array({0, 100 - c.val_tokens}),
                                       nlohmann::json::array({100 - c.val_tokens, c.val_tokens})}));
      TokenDataset ds(out);
      EXPECT_EQ(ds.split_size(Split::Train), 100 - c.val_tokens);
      EXPECT_EQ(ds.split_size(Split::Val), c.val_tokens);
    }
  }
}

TEST(PrepareDataset, ZeroValFractionPutsEverythingInTrain) {
  TempDir tmp;
  write_file(tmp.path() / "corpus", numbered_corpus(50));
  const PrepareSummary s = prepare_dataset(options_for({tmp / "corpus"}, tmp / "out", 0.0, "%"));
  EXPECT_EQ(s.val_tokens, 0);
  EXPECT_EQ(s.num_documents, 50);
  EXPECT_FALSE(s.val_inside_document);

  write_file(tmp.path() / "one", "only document\n");
  const PrepareSummary one = prepare_dataset(options_for({tmp / "one"}, tmp / "out1", 0.0));
  EXPECT_EQ(one.val_tokens, 0);
  EXPECT_EQ(one.train_tokens, 15);
  EXPECT_FALSE(one.val_inside_document);
  EXPECT_EQ(TokenDataset(tmp / "out1").split_size(Split::Val), 0);
}

TEST(PrepareDataset, DoesNotReadItsOwnOutputBack) {
  TempDir tmp;
  write_file(tmp.path() / "corpus" / "text", "some text\n");
  const std::string out = tmp / "corpus/prepared";
  const PrepareSummary first = prepare_dataset(options_for({tmp / "corpus"}, out));
  PrepareOptions again = options_for({tmp / "corpus"}, out);
  again.overwrite = true;
  const PrepareSummary second = prepare_dataset(again);
  EXPECT_EQ(first.num_files, 1);
  EXPECT_EQ(second.num_files, 1);
  EXPECT_EQ(second.train_tokens, first.train_tokens);
}

TEST(PrepareDataset, RefusesADirectoryThatHoldsADatasetUnlessOverwriting) {
  TempDir tmp;
  write_file(tmp.path() / "old", "the old corpus\n");
  write_file(tmp.path() / "new", "a new corpus\n");
  const std::string out = tmp / "out";
  prepare_dataset(options_for({tmp / "old"}, out));
  const std::string old_index = read_bytes(fs::path(out) / "index.json");
  const std::string old_tokens = read_bytes(fs::path(out) / "tokens.bin");

  const std::string what = error_of([&] { prepare_dataset(options_for({tmp / "new"}, out)); });
  EXPECT_NE(what.find("output directory '" + out + "' already holds index.json; pass --overwrite"),
            std::string::npos)
      << what;
  EXPECT_EQ(read_bytes(fs::path(out) / "index.json"), old_index);
  EXPECT_EQ(read_bytes(fs::path(out) / "tokens.bin"), old_tokens);

  PrepareOptions o = options_for({tmp / "new"}, out);
  o.overwrite = true;
  prepare_dataset(o);
  EXPECT_EQ(documents_of(out), (std::vector<std::string>{"a new corpus\n"}));
}

TEST(PrepareDataset, RefusesAnUnrelatedTokensBin) {
  TempDir tmp;
  write_file(tmp.path() / "corpus", "text\n");
  write_file(tmp.path() / "mine" / "tokens.bin", "my own file");
  write_file(tmp.path() / "mine" / "notes.txt", "keep me");
  const std::string what =
      error_of([&] { prepare_dataset(options_for({tmp / "corpus"}, tmp / "mine")); });
  EXPECT_NE(what.find("'" + (tmp / "mine") + "' already holds tokens.bin; pass --overwrite"),
            std::string::npos)
      << what;
  EXPECT_EQ(read_bytes(tmp.path() / "mine" / "tokens.bin"), "my own file");
  EXPECT_FALSE(fs::exists(tmp.path() / "mine" / "index.json"));

  // Overwriting replaces the dataset files and nothing else.
  PrepareOptions o = options_for({tmp / "corpus"}, tmp / "mine");
  o.overwrite = true;
  prepare_dataset(o);
  EXPECT_EQ(read_bytes(tmp.path() / "mine" / "notes.txt"), "keep me");
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(tmp.path() / "mine"))
    names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"index.json", "notes.txt", "tokens.bin"}));
}

// With --overwrite, an index.json that is a directory fails the run before tokens.bin is
// replaced: the old pair stays as it was.
TEST(PrepareDataset, ATargetThatIsNotAFileFailsBeforeAnythingIsReplaced) {
  TempDir tmp;
  write_file(tmp.path() / "corpus", "text\n");
  write_file(tmp.path() / "out" / "tokens.bin", "old tokens");
  fs::create_directories(tmp.path() / "out" / "index.json");
  PrepareOptions o = options_for({tmp / "corpus"}, tmp / "out");
  o.overwrite = true;
  const std::string what = error_of([&] { prepare_dataset(o); });
  EXPECT_NE(what.find("index.json': it is not a regular file"), std::string::npos) << what;
  EXPECT_EQ(read_bytes(tmp.path() / "out" / "tokens.bin"), "old tokens");
}

// A killed run's temporaries (its pid no longer runs) and older versions' fixed-name ones are
// removed by the next run; a live run's are not touched.
TEST(PrepareDataset, TemporariesOfKilledRunsAreRemoved) {
  TempDir tmp;
  write_file(tmp.path() / "corpus", "text\n");
  const fs::path out = tmp.path() / "out";
  const std::string live = "tokens.bin.tmp." + std::to_string(::getpid()) + ".0123456789abcdef";
  for (const std::string name : {std::string("tokens.bin.tmp.999999999.0123456789abcdef"),
                                 std::string("index.json.tmp"), live, std::string("notes.txt")})
    write_file(out / name, "x");
  prepare_dataset(options_for({tmp / "corpus"}, tmp / "out"));
  EXPECT_EQ(names_in(out), (std::set<std::string>{"index.json", "tokens.bin", live, "notes.txt"}));
}

TEST(PrepareDataset, AFailedRunLeavesNoDirectoryItCreated) {
  TempDir tmp;
  write_file(tmp.path() / "bin", std::string("\0\1\2", 3));
  write_file(tmp.path() / "blank", "  \n");
  // Created with its parents, then nothing to write: all of them are removed again.
  error_of([&] { prepare_dataset(options_for({tmp / "blank"}, tmp / "a/b/c")); });
  EXPECT_FALSE(fs::exists(tmp.path() / "a"));
  error_of([&] { prepare_dataset(options_for({tmp / "bin"}, tmp / "a/b/c")); });
  EXPECT_FALSE(fs::exists(tmp.path() / "a"));
  // A directory that was there before stays, empty as it was.
  fs::create_directories(tmp.path() / "existing");
  error_of([&] { prepare_dataset(options_for({tmp / "blank"}, tmp / "existing")); });
  EXPECT_TRUE(fs::is_directory(tmp.path() / "existing"));
  EXPECT_TRUE(fs::is_empty(tmp.path() / "existing"));
}

TEST(PrepareDataset, ABinaryFileNamedAsInputIsAnError) {
  TempDir tmp;
  write_file(tmp.path() / "corpus" / "text", "hello\n");
  write_file(tmp.path() / "corpus" / "image.bin", std::string("\x89PNG\0\0", 6));
  const std::string named = tmp / "corpus/image.bin";
  for (const std::vector<std::string>& inputs :
       {std::vector<std::string>{tmp / "corpus/text", named},
        std::vector<std::string>{tmp / "corpus", named},     // found by the walk first
        std::vector<std::string>{named, tmp / "corpus"}}) {  // named first
    const std::string what = error_of([&] { prepare_dataset(options_for(inputs, tmp / "out")); });
    EXPECT_NE(what.find("input '" + named + "' looks binary"), std::string::npos) << what;
    EXPECT_FALSE(fs::exists(tmp.path() / "out"));
  }
  // Found by walking a directory, it is skipped.
  const PrepareSummary s = prepare_dataset(options_for({tmp / "corpus"}, tmp / "out"));
  EXPECT_EQ(s.num_files, 1);
}

// Reads back every name in a directory.

// Runs prepare_dataset on a and b in two threads released together; the error of each ("" if
// none).
std::array<std::string, 2> prepare_both_at_once(const PrepareOptions& a, const PrepareOptions& b) {
  std::atomic<int> ready{0};
  std::array<std::string, 2> errors;
  auto run = [&](int who) {
    ++ready;
    while (ready.load() < 2) {
    }
    try {
      prepare_dataset(who == 0 ? a : b);
    } catch (const std::exception& e) {
      errors[static_cast<size_t>(who)] = e.what();
    }
  };
  std::thread t0(run, 0), t1(run, 1);
  t0.join();
  t1.join();
  return errors;
}

// Two runs into one directory at once, several times: each finishes, and what is left is one
// whole dataset (the tokens and the index of the same run), with no temporaries.
TEST(PrepareDataset, ConcurrentRunsLeaveOneConsistentDataset) {
  TempDir tmp;
  write_file(tmp.path() / "a", numbered_corpus(20000));
  std::string b_text;
  for (int i = 0; i < 15000; ++i) b_text += "another corpus, line " + std::to_string(i) + "\n%\n";
  write_file(tmp.path() / "b", b_text);
  prepare_dataset(options_for({tmp / "a"}, tmp / "ref-a", 0.1, "%", 1));
  prepare_dataset(options_for({tmp / "b"}, tmp / "ref-b", 0.1, "%", 2));
  const std::string tokens_a = read_bytes(tmp.path() / "ref-a" / "tokens.bin");
  const std::string tokens_b = read_bytes(tmp.path() / "ref-b" / "tokens.bin");
  const std::string index_a = read_bytes(tmp.path() / "ref-a" / "index.json");
  const std::string index_b = read_bytes(tmp.path() / "ref-b" / "index.json");

  const std::string out = tmp / "out";
  for (int trial = 0; trial < 8; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    PrepareOptions a = options_for({tmp / "a"}, out, 0.1, "%", 1);
    PrepareOptions b = options_for({tmp / "b"}, out, 0.1, "%", 2);
    a.overwrite = b.overwrite = true;
    const auto errors = prepare_both_at_once(a, b);
    EXPECT_EQ(errors[0], "");
    EXPECT_EQ(errors[1], "");
    const std::string tokens = read_bytes(fs::path(out) / "tokens.bin");
    const std::string index = read_bytes(fs::path(out) / "index.json");
    EXPECT_TRUE((tokens == tokens_a && index == index_a) ||
                (tokens == tokens_b && index == index_b));
    EXPECT_NO_THROW(TokenDataset ds(out));
    EXPECT_EQ(names_in(out), (std::set<std::string>{"index.json", "tokens.bin"}));
  }
}

// Without overwrite, of two runs into one new directory one writes the dataset and the other is
// refused, whichever commits second.
TEST(PrepareDataset, ConcurrentRunsWithoutOverwriteNeverReplaceEachOther) {
  TempDir tmp;
  write_file(tmp.path() / "a", numbered_corpus(20000));
  for (int trial = 0; trial < 8; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const std::string out = tmp / ("out-" + std::to_string(trial));
    const auto errors = prepare_both_at_once(options_for({tmp / "a"}, out, 0.1, "%", 0),
                                             options_for({tmp / "a"}, out, 0.1, "%", 1));
    EXPECT_EQ(errors[0].empty() + errors[1].empty(), 1) << errors[0] << " | " << errors[1];
    const std::string& refused = errors[0].empty() ? errors[1] : errors[0];
    EXPECT_NE(refused.find("already holds"), std::string::npos) << refused;
    EXPECT_NO_THROW(TokenDataset ds(out));
    EXPECT_EQ(names_in(out), (std::set<std::string>{"index.json", "tokens.bin"}));
  }
}

// The memory tests run prepare in a child process whose address space may grow by only
// `headroom` bytes; the child reports "ok", the hetmoe::Error message, or "std::bad_alloc".
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HETMOE_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define HETMOE_TEST_SANITIZED 1
#endif
#endif

std::string prepare_with_address_space_limit(const PrepareOptions& options, size_t headroom) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    ::close(fds[0]);
    std::string result;
    try {
      size_t vm_kib = 0;
      std::ifstream status("/proc/self/status");
      for (std::string line; std::getline(status, line);) {
        if (line.rfind("VmSize:", 0) == 0) vm_kib = std::stoull(line.substr(7));
      }
      const rlimit limit{vm_kib * 1024 + headroom, RLIM_INFINITY};
      if (vm_kib == 0 || ::setrlimit(RLIMIT_AS, &limit) != 0) {
        result = "cannot limit the address space";
      } else {
        prepare_dataset(options);
        result = "ok";
      }
    } catch (const Error& e) {
      result = e.what();
    } catch (const std::bad_alloc&) {
      result = "std::bad_alloc";
    } catch (const std::exception& e) {
      result = std::string("other exception: ") + e.what();
    }
    const ssize_t written = ::write(fds[1], result.data(), result.size());
    ::_exit(written == static_cast<ssize_t>(result.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  std::string result;
  char buf[4096];
  ssize_t n = 0;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) result.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) result += " (child died with status " + std::to_string(status) + ")";
  return result;
}

constexpr size_t kMiB = size_t{1} << 20;

// One 64 MiB line: prepare holds the text once (no per-document copies, no 4-byte ids, no
// buffered documents), so it fits in the file's size plus a little.
TEST(PrepareDataset, AFileWithoutNewlinesNeedsLittleMoreThanItsSize) {
#ifdef HETMOE_TEST_SANITIZED
  GTEST_SKIP() << "address-space limits do not work under a sanitizer";
#endif
  TempDir tmp;
  write_file(tmp.path() / "big", std::string(64 * kMiB, 'z'));
  // A whole-file copy more than the text itself would not fit.
  EXPECT_EQ(
      prepare_with_address_space_limit(options_for({tmp / "big"}, tmp / "out", 0.5), 96 * kMiB),
      "ok");
  TokenDataset ds(tmp / "out");
  EXPECT_EQ(ds.num_tokens(), static_cast<int64_t>(64 * kMiB) + 1);
  EXPECT_EQ(ds.split_size(Split::Val), static_cast<int64_t>(32 * kMiB) + 1);
}

TEST(PrepareDataset, OutOfMemoryIsAnErrorNamingTheFile) {
#ifdef HETMOE_TEST_SANITIZED
  GTEST_SKIP() << "address-space limits do not work under a sanitizer";
#endif
  TempDir tmp;
  write_file(tmp.path() / "big", std::string(64 * kMiB, 'z'));
  const std::string what =
      prepare_with_address_space_limit(options_for({tmp / "big"}, tmp / "out"), 16 * kMiB);
  const std::string big = fs::canonical(tmp.path() / "big").string();
  EXPECT_EQ(what.rfind("[data] out of memory while reading '" + big + "' (67108864 bytes)", 0), 0u)
      << what;
  EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));
}

}  // namespace
}  // namespace hetmoe
