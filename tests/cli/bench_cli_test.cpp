// `hetmoe bench`, `plan` and `check` from the command line: a short run of each, the JSON file,
// exit codes, and one-line errors for bad flags, backends, grids, files and result documents.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "hetmoe/device/registry.h"
#include "support/cli_runner.h"
#include "support/train_fixture.h"

namespace hetmoe {
namespace {

using test_support::expect_contains;
using test_support::Result;
using test_support::run;
using test_support::TempDir;

bool gpu_available() {
  for (const Backend* b : backends())
    if (b->kind() != BackendKind::CPU && b->available()) return true;
  return false;
}

class BenchCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test_support::prepare_corpus(dir_);
    config_ = dir_.write("c.yaml", to_yaml(test_support::tiny_config(dir_)));
    catalog_ = " --catalog " + std::string(HETMOE_SOURCE_DIR) + "/configs/devices.yaml";
  }
  TempDir dir_;
  std::string config_, catalog_;
};

TEST_F(BenchCliTest, BenchWritesTheTableAndTheJsonDocument) {
  const std::string out = dir_ / "bench.json";
  Result r = run("bench --config " + config_ + catalog_ +
                 " --repeats 2 --warmup 1 --train-warmup 1 --train-steps 2 --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "op.experts.backward");  // progress lines and table
  expect_contains(r, "train.tokens_per_s");
  expect_contains(r, "wrote " + out);
  std::ifstream in(out);
  const nlohmann::json doc = nlohmann::json::parse(in);
  EXPECT_EQ(doc["schema"], "hetmoe-bench/1");
  ASSERT_EQ(doc["runs"].size(), 1u);
  EXPECT_EQ(doc["runs"][0]["backend"], "cpu");
  EXPECT_EQ(doc["settings"]["repeats"], 2);
  // Written through a private temporary, yet with a plain file's permissions (0666 less umask),
  // and nothing left beside it.
  const mode_t mask = umask(0);
  umask(mask);
  struct stat st {};
  ASSERT_EQ(stat(out.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);
  for (const auto& e : std::filesystem::directory_iterator(dir_.path()))
    EXPECT_EQ(e.path().filename().string().find("bench.json.tmp"), std::string::npos) << e.path();
}

TEST_F(BenchCliTest, BenchRefusesBadBackendsAndUnwritableOutputsBeforeRunning) {
  Result r = run("bench --config " + config_ + " --backends tpu");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "backend 'tpu' is not built into this hetmoe");
  r = run("bench --config " + config_ + " --backends cpu, --no-train --no-ops");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "--backends 'cpu,' has an empty item");
  r = run("bench --config " + config_ + " --out /nonexistent/dir/b.json");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "cannot write '/nonexistent/dir/b.json'");
  EXPECT_EQ(r.output.find("op.route"), std::string::npos) << "nothing ran";
  // A directory where the JSON should go: refused before running, and no file left beside it.
  r = run("bench --config " + config_ + " --out " + dir_.str());
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "is a directory; name a file to write");
  EXPECT_EQ(r.output.find("op.route"), std::string::npos) << "nothing ran";
  r = run("bench --config " + config_ + " --out ''");
  EXPECT_EQ(r.code, 2);
  // An existing file (a user's, or an earlier result) is kept unless --overwrite is given.
  const std::string mine = dir_.write("mine.json", "precious\n");
  r = run("bench --config " + config_ + " --no-train --no-ops --out " + mine);
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "--out '" + mine + "' already exists; give --overwrite to replace it");
  EXPECT_EQ(test_support::file_text(mine), "precious\n");
  r = run("bench --config " + config_ + " --no-train --no-ops --repeats 1 --overwrite --out " +
          mine);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(test_support::file_text(mine).find("hetmoe-bench/1"), std::string::npos);
  r = run("bench --config " + config_ + " --repeats 0");
  EXPECT_EQ(r.code, 2);
  r = run("bench --config " + config_ + " --catalog " + dir_.write("bad.yaml", "devices: 3\n"));
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "'devices' must be a non-empty list");
}

TEST_F(BenchCliTest, PlanPrintsCountsMemoryAndEveryCatalogDevice) {
  const std::string ling = std::string(HETMOE_SOURCE_DIR) + "/configs/ling-lite.yaml";
  Result r = run("plan --config " + ling + catalog_ + " --grid dp=1,ep=8 --mfu 0.3");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "parameters: 16.80B total, 2.75B active per token");
  expect_contains(r, "grid dp=1 x ep=8 (8 ranks)");
  expect_contains(r, "8 of 64 experts per MoE layer");
  for (const char* d : {"ling-A", "ling-E", "nvidia-h100-sxm", "cpu-epyc-2vcpu"})
    expect_contains(r, d);
  expect_contains(r, "30.0% assum.");
  // The example in configs/ling-plus.yaml's header runs as written there.
  const std::string plus = std::string(HETMOE_SOURCE_DIR) + "/configs/ling-plus.yaml";
  r = run("plan --config " + plus + catalog_ + " --grid dp=8,ep=64 --set train.micro_batch=512");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "grid dp=8 x ep=64 (512 ranks)");
}

TEST_F(BenchCliTest, PlanUsesTheMeasuredMfuOfABenchDocument) {
  const std::string fixture =
      std::string(HETMOE_SOURCE_DIR) + "/tests/fixtures/bench/cuda-h100-56935d8.json";
  Result r = run("plan --config " + config_ + catalog_ + " --bench " + fixture);
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "17.2% meas.");                          // the fixture's H100 train.mfu_peak
  expect_contains(r, "matches no catalog device; not used");  // its Xeon host run
}

TEST_F(BenchCliTest, PlanRefusesGridsAndDocumentsThatDoNotFit) {
  Result r = run("plan --config " + config_ + " --grid dp=1,ep=3");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "ep=3 does not divide moe.num_experts 4");
  r = run("plan --config " + config_ + " --grid tp=2");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "[usage] bad --grid 'tp=2': unknown part 'tp'");
  r = run("plan --config " + config_ + " --grid dp=1,ep=2,dp=2");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "'dp' is given twice");
  // The part left out keeps the config's value.
  r = run("plan --config " + config_ + " --set parallel.expert_parallel=2 --grid dp=2");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "grid dp=2 x ep=2 (4 ranks)");
  r = run("plan --config " + config_ + " --mfu 1.5");
  EXPECT_EQ(r.code, 2);
  // NaN passes CLI11's ranges; it is refused by name.
  for (const char* flag : {"--mfu nan", "--tokens nan", "--tokens inf"}) {
    r = run("plan --config " + config_ + " " + flag);
    EXPECT_EQ(r.code, 2) << flag;
    expect_contains(r, "is not a finite number");
  }
  // Astronomical but finite: printed as such, not as an overflowed integer.
  r = run("plan --config " + config_ + catalog_ + " --tokens 1e300");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("-9,223"), std::string::npos) << r.output;
  r = run("plan --config " + config_ + " --bench " + dir_.write("x.json", "{\"schema\": 1}"));
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "is not a hetmoe benchmark result");
}

TEST_F(BenchCliTest, CheckPassesForTheReferencePathAndFailsBeyondATolerance) {
  Result r = run("check --config " + config_ + " --steps 3");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "A = cpu fp32 native, B = cpu fp32 reference");
  expect_contains(r, "check passed");
  r = run("check --config " + config_ + " --steps 2 --dtypes fp32,bf16 --tolerance 1e-7");
  EXPECT_EQ(r.code, 1) << r.output;
  expect_contains(r, "first beyond tolerance");
  expect_contains(r, "check FAILED: the losses differ by more than 1.0e-07 from step 1");
}

TEST_F(BenchCliTest, CheckRefusesAmbiguousSides) {
  Result r = run("check --config " + config_ + " --dtypes fp32,bf16 --kernels native,reference");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "give two values to exactly one of --backends, --dtypes and --kernels");
  // Usage errors exit 2, apart from 1 for "beyond tolerance", before any work starts.
  r = run("check --config " + config_ + " --kernels native,fast");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "unknown kernel implementation 'fast'");
  for (const char* twice :
       {"--kernels native,native", "--dtypes fp32,fp32", "--backends cpu,cpu"}) {
    r = run("check --config " + config_ + " " + twice);
    EXPECT_EQ(r.code, 2) << twice;
    expect_contains(r, "twice");
  }
  r = run("check --config " + config_ + " --backends ''");
  EXPECT_EQ(r.code, 2);
  // A backend without a device here is refused before the sides are printed.
  if (!gpu_available()) {
    r = run("check --config " + config_ + " --backends cuda");
    EXPECT_NE(r.code, 0);
    expect_contains(r, "backend 'cuda'");
    EXPECT_EQ(r.output.find("check: "), std::string::npos) << r.output;
  }
  r = run("check --config " + config_ + " --backends cpu,tpu");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "backend 'tpu' is not built into this hetmoe");
  r = run("check --config " + config_ + " --tolerance nan");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "'nan' is not a finite number");
}

}  // namespace
}  // namespace hetmoe
