// `hetmoe bench`'s suite on the CPU with a tiny config: every figure of the documented schema is
// there with its unit and direction, rates and utilisations follow from the medians, the cost
// from the catalog price, and the JSON document reads back; bad documents are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "hetmoe/bench/suite.h"
#include "hetmoe/core/error.h"
#include "hetmoe/device/registry.h"
#include "hetmoe/model/transformer.h"
#include "support/train_fixture.h"

namespace hetmoe {
namespace {

using test_support::TempDir;

// A catalog whose one entry matches this machine's CPU.
DeviceCatalog this_cpu_catalog() {
  CatalogDevice d;
  d.name = "this-cpu";
  d.match = {backend(BackendKind::CPU).devices().at(0).name};
  d.peak_fp32_tflops = 1.0;
  d.memory_gb = 16;
  d.price_per_hour = 0.5;
  d.currency = "USD";
  DeviceCatalog c;
  c.devices = {d};
  return c;
}

class SuiteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test_support::prepare_corpus(dir_);
    config_ = test_support::tiny_config(dir_);
    options_.warmup = 1;
    options_.repeats = 3;
    options_.train_warmup = 1;
    options_.train_steps = 2;
  }
  TempDir dir_;
  Config config_;
  BenchOptions options_;
};

TEST_F(SuiteTest, RunsEveryFigureWithUnitsRatesAndCost) {
  std::vector<std::string> lines;
  options_.progress = [&](const std::string& l) { lines.push_back(l); };
  const DeviceCatalog catalog = this_cpu_catalog();
  const BenchRun run = run_benchmarks(config_, "cpu", &catalog, options_);
  EXPECT_EQ(run.backend, "cpu");
  EXPECT_EQ(run.catalog_entry, "this-cpu");
  const char* names[] = {"ceiling.gemm",         "ceiling.memory",       "ceiling.copy",
                         "train.step_time",      "train.tokens_per_s",   "train.mfu",
                         "train.mfu_peak",       "memory.peak",          "cost.per_1T_tokens",
                         "op.route.forward",     "op.route.backward",    "op.permute.forward",
                         "op.permute.backward",  "op.experts.forward",   "op.experts.backward",
                         "op.unpermute.forward", "op.unpermute.backward"};
  for (const char* n : names) {
    const BenchFigure* f = run.find(n);
    ASSERT_NE(f, nullptr) << n;
    EXPECT_GT(f->median(), 0) << n;
    EXPECT_TRUE(f->better == "lower" || f->better == "higher") << n;
    EXPECT_LE(f->min(), f->median());
    EXPECT_GE(f->max(), f->median());
  }
  EXPECT_EQ(lines.size(), run.figures.size()) << "one progress line per figure";
  // Training is measured before the ceilings allocate their buffers: memory.peak is its own.
  EXPECT_EQ(run.figures.front().name, "train.step_time");
  EXPECT_LT(run.find("memory.peak") - run.figures.data(),
            run.find("ceiling.gemm") - run.figures.data());
  EXPECT_EQ(run.find("op.route.forward")->samples.size(), 3u);
  EXPECT_EQ(run.find("train.step_time")->samples.size(), 2u);

  // Tokens/s is the step's tokens over its time; MFU is that over the measured GEMM ceiling.
  const auto& t = config_.train;
  const double tokens = static_cast<double>(t.grad_accum * t.micro_batch * t.seq_len);
  // Sample by sample: with an even count the median of rates is not the rate of the median time.
  const BenchFigure* steps = run.find("train.step_time");
  const BenchFigure* rates = run.find("train.tokens_per_s");
  ASSERT_EQ(rates->samples.size(), steps->samples.size());
  for (size_t i = 0; i < steps->samples.size(); ++i)
    EXPECT_NEAR(rates->samples[i], tokens / (steps->samples[i] / 1e3), 1e-9 * rates->samples[i]);
  const double tps = rates->median();
  const double flops = training_flops_per_token(config_.model, config_.moe, t.seq_len);
  EXPECT_NEAR(run.find("train.mfu")->median(),
              tps * flops / (run.find("ceiling.gemm")->median() * 1e12), 1e-3);
  EXPECT_NEAR(run.find("train.mfu_peak")->median(), tps * flops / 1e12, 1e-3);  // 1 TFLOP/s
  EXPECT_NEAR(run.find("cost.per_1T_tokens")->median(), 1e12 / tps / 3600 * 0.5, 1e-6 * 1e12 / tps);
  EXPECT_EQ(run.find("cost.per_1T_tokens")->unit, "USD");

  // The expert GEMMs are held to the GEMM ceiling, data movement to the copy ceiling.
  const BenchFigure* experts = run.find("op.experts.forward");
  EXPECT_EQ(experts->ceiling, "ceiling.gemm");
  EXPECT_EQ(experts->rate_unit, "TFLOP/s");
  EXPECT_NEAR(experts->utilisation, experts->rate / run.find("ceiling.gemm")->median(), 1e-9);
  EXPECT_EQ(run.find("op.permute.forward")->ceiling, "ceiling.copy");
}

TEST_F(SuiteTest, DocumentFollowsTheSchemaAndReadsBack) {
  options_.ops = false;
  const BenchRun run = run_benchmarks(config_, "cpu", nullptr, options_);
  EXPECT_EQ(run.find("op.route.forward"), nullptr) << "--no-ops";
  EXPECT_EQ(run.find("cost.per_1T_tokens"), nullptr) << "no catalog, no price";
  const std::string text = bench_document(config_, "tiny.yaml", options_, {run});
  const nlohmann::json doc = nlohmann::json::parse(text);
  EXPECT_EQ(doc["schema"], "hetmoe-bench/1");
  for (const char* key : {"hetmoe", "libtorch", "host", "date", "config", "dtype", "settings"})
    EXPECT_TRUE(doc.contains(key)) << key;
  EXPECT_EQ(doc["config"]["hash"], workload_hash(config_));
  EXPECT_EQ(doc["config"]["path"], "tiny.yaml");
  EXPECT_TRUE(doc["runs"][0]["catalog_entry"].is_null());
  const auto& fig = doc["runs"][0]["figures"][0];
  for (const char* key : {"name", "unit", "better", "median", "min", "max", "stdev", "samples"})
    EXPECT_TRUE(fig.contains(key)) << key;

  const std::string path = dir_.write("bench.json", text);
  std::string dtype;
  const std::vector<BenchRun> back = read_bench_document(path, &dtype);
  EXPECT_EQ(dtype, "fp32");
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].device, run.device);
  EXPECT_EQ(back[0].figures.size(), run.figures.size());
  EXPECT_DOUBLE_EQ(back[0].find("train.tokens_per_s")->median(),
                   run.find("train.tokens_per_s")->median());
}

TEST(BenchDocumentTest, BadDocumentsAreRefusedNamingFileAndField) {
  TempDir dir;
  const struct {
    const char* text;
    const char* expect;
  } cases[] = {
      {"{", "is not valid JSON"},
      {R"({"schema": "hetmoe-bench/2", "runs": []})", "is not a hetmoe benchmark result"},
      {R"({"schema": "hetmoe-bench/1", "dtype": "fp32"})", "lacks list field 'runs'"},
      {R"({"schema": "hetmoe-bench/1", "dtype": "fp32", "runs": [{"device": "x", "figures": []}]})",
       "runs[0] lacks string field 'backend'"},
      {R"({"schema": "hetmoe-bench/1", "dtype": "fp32", "runs": [{"backend": "cpu", "device": "x",
          "figures": [{"name": "a"}]}]})",
       "runs[0] has a figure without name or median"},
  };
  for (const auto& c : cases) {
    const std::string path = dir.write("doc.json", c.text);
    try {
      read_bench_document(path);
      ADD_FAILURE() << "accepted " << c.text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(read_bench_document(dir / "missing.json"), Error);
}

TEST(BenchDocumentTest, WorkloadHashIgnoresWhereAndFollowsWhat) {
  Config a;
  Config b = a;
  b.backend.device = "cuda";
  b.run.out_dir = "elsewhere";
  b.data.path = "other/data";
  b.train.steps = 7;
  b.train.threads = 1;
  b.train.keep_last = 7;
  b.train.eval_batches = 5;
  EXPECT_EQ(workload_hash(a), workload_hash(b));
  b.model.d_model *= 2;
  EXPECT_NE(workload_hash(a), workload_hash(b));
  Config c = a;
  c.backend.dtype = "bf16";
  EXPECT_NE(workload_hash(a), workload_hash(c));
}

TEST(BenchFigureTest, MedianAndSpread) {
  BenchFigure f;
  f.samples = {3, 1, 2, 10};
  EXPECT_DOUBLE_EQ(f.median(), 2.5);
  EXPECT_DOUBLE_EQ(f.min(), 1);
  EXPECT_DOUBLE_EQ(f.max(), 10);
  EXPECT_NEAR(f.stdev(), std::sqrt((1.0 + 9.0 + 4.0 + 36.0) / 3), 1e-12);  // mean 4
  f.samples = {5};
  EXPECT_DOUBLE_EQ(f.stdev(), 0);
}

}  // namespace
}  // namespace hetmoe
