// `hetmoe data prepare` through the executable: exit codes and one-line messages for bad values,
// the refusal to replace a dataset, what the output line says about the validation split, and
// the settings taken from a run config (--config).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "hetmoe/data/dataset.h"
#include "support/cli_runner.h"
#include "support/temp_dir.h"

namespace hetmoe {
namespace {

using test_support::expect_contains;
using test_support::Result;
using test_support::run;
using test_support::TempDir;

void expect_one_line(const Result& r) {
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "one line:\n" << r.output;
}

std::string corpus(int documents) {
  std::string text;
  for (int i = 0; i < documents; ++i) text += "line " + std::to_string(i) + " of a corpus\n%\n";
  return text;
}

TEST(DataPrepareCli, EmptyValuesAreUsageErrors) {
  TempDir dir;
  const std::string in = dir.write("in.txt", "text\n");
  for (const std::string& args : {"--input '' --out " + dir.str("out"),
                                  "--input " + in + " --out ''", "--input " + in + " -o ''",
                                  "--input " + in + " --out " + dir.str("out") + " --separator ''",
                                  "--input " + in + " --input '' --out " + dir.str("out")}) {
    SCOPED_TRACE(args);
    const Result r = run("data prepare " + args);
    EXPECT_EQ(r.code, 2);
    expect_contains(r, "must not be empty");
    expect_one_line(r);
  }
  EXPECT_FALSE(std::filesystem::exists(dir.str("out")));
}

TEST(DataPrepareCli, NeedsAnOutputDirectory) {
  TempDir dir;
  const Result r = run("data prepare --input " + dir.write("in.txt", "text\n"));
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "data prepare needs --out DIR or --config FILE");
  expect_one_line(r);
}

TEST(DataPrepareCli, RefusesToReplaceADatasetWithoutOverwrite) {
  TempDir dir;
  const std::string in = dir.write("in.txt", corpus(20));
  const std::string prepare =
      "data prepare --separator % --input " + in + " --out " + dir.str("out");
  ASSERT_EQ(run(prepare).code, 0);
  Result r = run(prepare);
  EXPECT_EQ(r.code, 1);
  expect_contains(
      r, "output directory '" + dir.str("out") + "' already holds index.json; pass --overwrite");
  expect_one_line(r);
  r = run(prepare + " --overwrite");
  EXPECT_EQ(r.code, 0) << r.output;
}

TEST(DataPrepareCli, SaysWhenThereIsNoValidationSplit) {
  TempDir dir;
  const std::string in = dir.write("in.txt", corpus(20));
  Result r = run("data prepare --separator % --val-fraction 0 --input " + in + " --out " +
                 dir.str("none"));
  EXPECT_EQ(r.code, 0) << r.output;
  expect_contains(r, "no validation split");
  // One document: val is the tail of its tokens, and the line says so.
  r = run("data prepare --input " + dir.write("one.txt", "a single document\n") + " --out " +
          dir.str("one"));
  EXPECT_EQ(r.code, 0) << r.output;
  expect_contains(r, "one document, so val is its last tokens");
  EXPECT_GT(TokenDataset(dir.str("one")).split_size(Split::Val), 0);
}

TEST(DataPrepareCli, TakesPathAndValFractionFromAConfigAndFlagsWin) {
  TempDir dir;
  const std::string in = dir.write("in.txt", corpus(400));
  const std::string config =
      dir.write("c.yaml", "data: {path: " + dir.str("from-config") + ", val_fraction: 0.5}\n");
  Result r = run("data prepare --separator % --input " + in + " --config " + config);
  EXPECT_EQ(r.code, 0) << r.output;
  {
    TokenDataset ds(dir.str("from-config"));
    const double val_share =
        static_cast<double>(ds.split_size(Split::Val)) / static_cast<double>(ds.num_tokens());
    EXPECT_GT(val_share, 0.35);  // about half (the default would give about 0.05)
    EXPECT_LT(val_share, 0.65);
  }

  r = run("data prepare --separator % --input " + in + " --config " + config + " --out " +
          dir.str("from-flags") + " --val-fraction 0");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(TokenDataset(dir.str("from-flags")).split_size(Split::Val), 0);
}

TEST(DataPrepareCli, AConfigWhoseTokenizerPrepareCannotWriteIsAnError) {
  TempDir dir;
  const std::string config =
      dir.write("c.yaml", "data: {path: " + dir.str("out") + ", tokenizer: none}\n");
  Result r = run("data prepare --input " + dir.write("in.txt", "text\n") + " --config " + config);
  EXPECT_EQ(r.code, 1);
  expect_contains(r, config + ": data.tokenizer is 'none'");
  expect_one_line(r);
  EXPECT_FALSE(std::filesystem::exists(dir.str("out")));

  r = run("data prepare --input " + dir.str("in.txt") + " --config " + dir.str("missing.yaml"));
  EXPECT_EQ(r.code, 2);
  expect_contains(r, dir.str("missing.yaml"));
}

TEST(DataPrepareCli, ABinaryFileNamedAsInputIsAnError) {
  TempDir dir;
  const std::string bin = dir.write("data.bin", std::string("\0\1\2\3", 4));
  const Result r = run("data prepare --input " + bin + " --out " + dir.str("out"));
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "input '" + bin + "' looks binary");
  expect_one_line(r);
  EXPECT_FALSE(std::filesystem::exists(dir.str("out")));
}

}  // namespace
}  // namespace hetmoe
