// The Trainer as a library: a data source of one's own instead of a prepared dataset, and the
// on_step / on_eval / on_checkpoint callbacks with the step's metrics (losses, expert load).
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <numeric>

#include "hetmoe/core/error.h"
#include "hetmoe/device/registry.h"
#include "hetmoe/model/layers.h"
#include "hetmoe/train/trainer.h"
#include "support/error_of.h"
#include "support/ramp_source.h"
#include "support/train_fixture.h"

namespace hetmoe {
namespace {

using test_support::error_of;
using test_support::RampSource;
using test_support::TempDir;

// Says vocab_size 32, then writes id `id` everywhere: a source that breaks its promise.
class BrokenPromiseSource final : public DataSource {
 public:
  explicit BrokenPromiseSource(int32_t id) : id_(id) {}
  int64_t vocab_size() const override { return 32; }
  int64_t split_size(Split) const override { return 1 << 12; }
  void sample_windows(Split, int64_t batch, int64_t len, uint64_t, uint64_t, int32_t* out,
                      int64_t) const override {
    std::fill(out, out + batch * len, id_);
  }
  std::string describe() const override { return "broken source"; }

 private:
  int32_t id_;
};

// Options that train on a RampSource of 32 ids instead of a prepared dataset.
TrainerOptions ramp_options() {
  TrainerOptions o;
  o.data = std::make_shared<RampSource>(32);
  return o;
}

TEST(TrainerApiTest, CustomDataSourceAndCallbacks) {
  TempDir dir;
  Config c = test_support::tiny_config(dir);
  c.data.path = dir / "no-such-dataset";  // never opened: the source replaces it
  c.train.steps = 8;
  c.train.grad_accum = 1;
  c.train.eval_every = 4;
  c.train.save_every = 4;
  TrainerOptions o;
  o.data = std::make_shared<RampSource>(32);
  std::vector<StepMetrics> steps;
  std::vector<std::pair<int64_t, double>> evals;
  std::vector<std::pair<int64_t, std::string>> checkpoints;
  o.on_step = [&](const StepMetrics& m) { steps.push_back(m); };
  o.on_eval = [&](int64_t step, double loss) { evals.emplace_back(step, loss); };
  o.on_checkpoint = [&](int64_t step, const std::string& d) { checkpoints.emplace_back(step, d); };
  Trainer trainer(c, o);
  const TrainResult r = trainer.run();

  ASSERT_EQ(steps.size(), 8u);
  for (size_t i = 0; i < steps.size(); ++i) {
    const StepMetrics& m = steps[i];
    EXPECT_EQ(m.step, static_cast<int64_t>(i) + 1);
    EXPECT_GT(m.loss, 0);
    EXPECT_GT(m.lr, 0);
    EXPECT_FALSE(m.skipped);
    EXPECT_GT(m.tokens_per_s, 0);
    // One MoE layer (the first is dense); every routed slot is counted once.
    ASSERT_EQ(m.expert_load.size(), 1u);
    ASSERT_EQ(m.expert_load[0].size(), static_cast<size_t>(c.moe.num_experts));
    EXPECT_EQ(std::accumulate(m.expert_load[0].begin(), m.expert_load[0].end(), int64_t{0}),
              c.train.micro_batch * c.train.seq_len * c.moe.top_k);
  }
  EXPECT_LT(steps.back().loss, steps.front().loss) << "the ramp is learnable";
  EXPECT_DOUBLE_EQ(trainer.last_step().loss, steps.back().loss);
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_EQ(evals[0].first, 4);
  EXPECT_EQ(evals[1].first, 8);
  EXPECT_DOUBLE_EQ(evals[1].second, r.final_val_loss);
  ASSERT_EQ(checkpoints.size(), 2u);  // save_every 4: steps 4 and 8 (the final one is step 8)
  for (const auto& [step, d] : checkpoints) EXPECT_TRUE(std::filesystem::is_directory(d)) << d;
  EXPECT_EQ(checkpoints.back().second, r.checkpoint);
}

// MFU against the same peak `hetmoe bench` uses: the catalog entry of this device, where the
// catalog has one; a catalog that cannot be read costs a warning, not the run.
TEST(TrainerApiTest, MfuIsAgainstTheCatalogPeakOfThisDevice) {
  TempDir dir;
  Config c = test_support::tiny_config(dir);
  c.train.steps = 3;
  c.train.grad_accum = 1;
  c.train.eval_every = 3;
  c.train.save_final = false;
  c.backend.device = "cpu";
  TrainerOptions o;
  o.data = std::make_shared<RampSource>(32);
  const std::string name = backend_for(c10::Device(c10::kCPU)).devices().at(0).name;
  const std::string catalog =
      dir.write("devices.yaml", "devices:\n  - name: this-cpu\n    match: [\"" + name +
                                    "\"]\n    peak_tflops: {fp32: 0.125}\n    memory_gb: 1\n"
                                    "    price_per_hour: 1\n    currency: USD\n");
  const std::string broken = dir.write("broken.yaml", "devices: 3\n");
  struct RestoreEnv {  // whatever happens, later tests see the variable as it was
    const char* before = std::getenv("HETMOE_DEVICES");
    std::string saved = before ? before : "";
    ~RestoreEnv() {
      if (before)
        setenv("HETMOE_DEVICES", saved.c_str(), 1);
      else
        unsetenv("HETMOE_DEVICES");
    }
  } restore;
  auto train_with = [&](const std::string& path) {
    setenv("HETMOE_DEVICES", path.c_str(), 1);
    o.overwrite = true;
    return Trainer(c, o).run();
  };
  const TrainResult r = train_with(catalog);
  const TrainResult fallback = train_with(broken);
  const double flops = training_flops_per_token(c.model, c.moe, c.train.seq_len);
  ASSERT_GT(r.tokens_per_s, 0);
  EXPECT_NEAR(r.mfu, r.tokens_per_s * flops / 0.125e12, 1e-9 * r.mfu);
  EXPECT_EQ(fallback.steps, 3);  // trained; MFU against the device table's estimate (or 0)
}

TEST(TrainerApiTest, ADataSourceWithTooLargeAVocabularyIsNamed) {
  TempDir dir;
  Config c = test_support::tiny_config(dir);
  TrainerOptions o;
  o.data = std::make_shared<RampSource>(c.model.vocab_size + 1);
  try {
    Trainer t(c, o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'ramp source' has vocab_size"), std::string::npos)
        << e.what();
  }
}

// A source whose ids exceed model.vocab_size (its vocab_size() said otherwise) is a [data] error
// naming it, not an indexing failure inside the model.
TEST(TrainerApiTest, TokenIdsOutsideTheVocabularyAreNamed) {
  TempDir dir;
  Config c = test_support::tiny_config(dir);
  TrainerOptions o;
  o.overwrite = true;  // each case starts afresh in the same run directory
  for (const int32_t id : {static_cast<int32_t>(c.model.vocab_size), int32_t{-3}}) {
    o.data = std::make_shared<BrokenPromiseSource>(id);
    Trainer t(c, o);
    try {
      t.train_step();
      ADD_FAILURE() << "no error for id " << id;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("[data] 'broken source' gave token id " + std::to_string(id)),
                std::string::npos)
          << what;
      EXPECT_NE(what.find("outside [0, model.vocab_size = " + std::to_string(c.model.vocab_size)),
                std::string::npos)
          << what;
    }
  }
}

TEST(TrainerApiTest, ACallbackExceptionStopsTheRun) {
  TempDir dir;
  Config c = test_support::tiny_config(dir);
  TrainerOptions o = ramp_options();
  o.on_step = [](const StepMetrics& m) {
    if (m.step == 2) throw std::runtime_error("stop here");
  };
  Trainer t(c, o);
  EXPECT_THROW(t.run(), std::runtime_error);
  EXPECT_EQ(t.state().step, 2);
}

// A step taken inside the caller's NoGradGuard still trains (the guard is the caller's business,
// e.g. after evaluating a checkpoint); inside InferenceMode it is refused by name.
TEST(TrainerApiTest, AStepUnderTheCallersNoGradGuardStillTrains) {
  TempDir dir;
  Trainer t(test_support::tiny_config(dir), ramp_options());
  {
    at::NoGradGuard no_grad;
    EXPECT_TRUE(std::isfinite(t.train_step()));
    EXPECT_FALSE(at::GradMode::is_enabled());  // the caller's mode is restored
  }
  EXPECT_EQ(t.state().step, 1);
  c10::InferenceMode inference;
  const std::string e = error_of([&] { t.train_step(); });
  EXPECT_NE(e.find("[train] train_step() called under c10::InferenceMode"), std::string::npos) << e;
  EXPECT_EQ(t.state().step, 1);
}

// Two trainers in one run directory deleted each other's checkpoints: the second is refused
// while the first lives, whatever its options, and the first goes on unharmed.
TEST(TrainerApiTest, ARunDirectoryInUseIsRefused) {
  TempDir dir;
  const Config c = test_support::tiny_config(dir);
  const TrainerOptions o = ramp_options();
  TrainerOptions replace = o;
  replace.overwrite = true;
  {
    Trainer first(c, o);
    const std::string e = error_of([&] { Trainer second(c, replace); });
    EXPECT_NE(
        e.find("[train] run directory '" + c.run.out_dir + "' is in use by another training run"),
        std::string::npos)
        << e;
    first.train_step();
    const std::string saved = first.save();
    EXPECT_TRUE(std::filesystem::exists(saved)) << saved;
  }
  Trainer after(c, replace);  // free again once the first is gone
  EXPECT_EQ(after.state().step, 0);
}

TEST(MoELayerApiTest, StandaloneLayerValidatesAndReturnsItsLosses) {
  MoEConfig m;
  m.num_experts = 4;
  m.top_k = 2;
  m.expert_hidden = 8;
  MoELayer layer(16, m);
  at::Tensor x = at::randn({10, 16});
  MoEStats stats;
  at::Tensor y = layer->forward(x, &stats);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_GT(stats.aux_loss.item<double>(), 0);
  EXPECT_GT(stats.z_loss.item<double>(), 0);
  EXPECT_EQ(stats.tokens_per_expert.sum().item<int64_t>(), 10 * 2);
  (y.sum() + stats.aux_loss).backward();
  EXPECT_TRUE(layer->router.grad().defined());
  m.top_k = 5;
  EXPECT_THROW(MoELayer(16, m), Error);
  m.top_k = 2;
  m.expert_hidden = 0;
  EXPECT_THROW(MoELayer(16, m), Error);
}

}  // namespace
}  // namespace hetmoe
