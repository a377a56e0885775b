// AdamW against a hand computation, decay rules, gradient clipping and the LR schedules.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "hetmoe/core/error.h"
#include "hetmoe/train/optimizer.h"
#include "hetmoe/train/schedule.h"

namespace hetmoe {
namespace {

TEST(AdamWTest, OneStepMatchesHandComputationAndSkipsDecayOn1DParameters) {
  at::Tensor w = at::full({2, 2}, 1.0f).requires_grad_(true);
  at::Tensor b = at::full({2}, 1.0f).requires_grad_(true);
  AdamW opt({{"w", w}, {"b", b}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  w.mutable_grad() = at::full({2, 2}, 0.5f);
  b.mutable_grad() = at::full({2}, -0.5f);
  opt.step(0.01);
  // Step 1: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps) = lr * sign(g).
  EXPECT_NEAR(w[0][0].item<double>(), 1.0 * (1 - 0.01 * 0.1) - 0.01, 1e-6);
  EXPECT_NEAR(b[0].item<double>(), 1.0 + 0.01, 1e-6);  // no decay on the 1-D parameter
  EXPECT_EQ(opt.steps_taken(), 1);
}

TEST(AdamWTest, StateRoundTripsAndRejectsMismatches) {
  at::Tensor w = at::randn({3, 2}).requires_grad_(true);
  AdamW a({{"w", w}}, AdamWOptions{});
  w.mutable_grad() = at::randn({3, 2});
  a.step(1e-3);
  auto state = a.state_dict();
  at::Tensor w2 = w.detach().clone().requires_grad_(true);
  AdamW b({{"w", w2}}, AdamWOptions{});
  b.load_state_dict(state);
  EXPECT_EQ(b.steps_taken(), 1);
  EXPECT_TRUE(at::equal(b.state_dict()["exp_avg/w"], state["exp_avg/w"]));
  // State for a parameter this optimizer does not have (a checkpoint of a bigger model).
  auto extra = state;
  extra["exp_avg/gone"] = at::zeros({2});
  EXPECT_THROW(b.load_state_dict(extra), Error);
  state["exp_avg/w"] = at::zeros({2, 2});
  EXPECT_THROW(b.load_state_dict(state), Error);
  state.erase("exp_avg_sq/w");
  EXPECT_THROW(b.load_state_dict(state), Error);
}

TEST(AdamWTest, ZeroGradDropsGradientsAndAccumulationStartsFromTheNextBackward) {
  at::Tensor w = at::full({2, 3}, 1.0f).requires_grad_(true);
  at::Tensor unused = at::full({2, 2}, 1.0f).requires_grad_(true);
  AdamW opt({{"w", w}, {"unused", unused}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  at::Tensor x = at::randn({4, 2});
  (x.matmul(w) * 3.0).sum().backward();
  opt.step(0.01);
  opt.zero_grad();
  EXPECT_FALSE(w.grad().defined());
  // Two micro-batches accumulate into what the first one left, not onto the old gradient.
  (x.matmul(w)).sum().backward();
  (x.matmul(w)).sum().backward();
  const at::Tensor expected = 2.0 * x.sum(0).unsqueeze(1).expand({2, 3});
  EXPECT_TRUE(at::allclose(w.grad(), expected, 1e-6, 1e-6));
  // A parameter no backward reaches has no gradient and no update, weight decay included.
  EXPECT_FALSE(unused.grad().defined());
  opt.step(0.01);
  EXPECT_TRUE(at::equal(unused, at::full({2, 2}, 1.0f)));
}

TEST(AdamWTest, AParameterReachedBeforeButNotThisStepMovesAsWithAZeroGradient) {
  for (const bool fused : {true, false}) {
    SCOPED_TRACE(fused ? "fused" : "reference");
    AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
    o.fused = fused;
    at::Tensor a = at::full({2, 2}, 1.0f).requires_grad_(true);
    at::Tensor b = at::full({2, 2}, 1.0f).requires_grad_(true);
    AdamW dropped({{"a", a}}, o), zeroed({{"b", b}}, o);
    a.mutable_grad() = at::full({2, 2}, 0.5f);
    b.mutable_grad() = at::full({2, 2}, 0.5f);
    dropped.step(0.01);
    zeroed.step(0.01);
    dropped.zero_grad();                   // step 2: no backward reaches a
    b.mutable_grad() = at::zeros({2, 2});  // what zero-filling used to leave
    dropped.step(0.01);
    zeroed.step(0.01);
    EXPECT_TRUE(at::equal(a, b));
    EXPECT_LT(a[0][0].item<float>(), 1.0f - 0.01f);  // momentum and decay went on
  }
}

TEST(ClipTest, ScalesToTheMaxNormAndReportsTheNormBefore) {
  at::Tensor a = at::zeros({2}).requires_grad_(true), b = at::zeros({1}).requires_grad_(true);
  a.mutable_grad() = at::tensor({3.0f, 0.0f});
  b.mutable_grad() = at::tensor({4.0f});
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
  EXPECT_NEAR(clip_grad_norm({a, b}, 0.0), 1.0, 1e-5);  // 0 disables clipping
}

TEST(ScheduleTest, WarmupThenCosineWsdOrConstant) {
  TrainConfig t;
  t.steps = 110;
  t.warmup = 10;
  t.lr = 1.0;
  t.min_lr = 0.1;
  EXPECT_NEAR(learning_rate(t, 0), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(t, 9), 1.0, 1e-12);
  t.schedule = "cosine";
  EXPECT_NEAR(learning_rate(t, 10), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(t, 60), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate(t, 110), 0.1, 1e-12);
  t.schedule = "wsd";
  t.wsd_decay_fraction = 0.2;
  EXPECT_NEAR(learning_rate(t, 80), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(t, 100), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate(t, 110), 0.1, 1e-12);
  t.schedule = "constant";
  EXPECT_NEAR(learning_rate(t, 100), 1.0, 1e-12);
}

}  // namespace
}  // namespace hetmoe

namespace hetmoe {
namespace {

TEST(AdamWTest, FusedMatchesTheReferenceOverSeveralSteps) {
  at::manual_seed(5);
  std::vector<at::Tensor> a, b;
  std::vector<std::pair<std::string, at::Tensor>> na, nb;
  for (auto shape : std::vector<std::vector<int64_t>>{{7, 5}, {5}, {3, 4, 2}}) {
    at::Tensor t = at::randn(shape);
    a.push_back(t.clone().requires_grad_(true));
    b.push_back(t.clone().requires_grad_(true));
    na.emplace_back("p" + std::to_string(na.size()), a.back());
    nb.emplace_back("p" + std::to_string(nb.size()), b.back());
  }
  AdamWOptions fused{0.9, 0.95, 1e-8, 0.1, true}, reference{0.9, 0.95, 1e-8, 0.1, false};
  AdamW fa(na, fused), rb(nb, reference);
  for (int step = 0; step < 5; ++step) {
    for (size_t i = 0; i < a.size(); ++i) {
      at::Tensor g = at::randn(a[i].sizes());
      a[i].mutable_grad() = g.clone();
      b[i].mutable_grad() = g.clone();
    }
    fa.step(1e-2 * (step + 1));
    rb.step(1e-2 * (step + 1));
  }
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(at::allclose(a[i], b[i], 1e-6, 1e-6)) << "parameter " << i;
  EXPECT_TRUE(at::allclose(fa.state_dict()["exp_avg_sq/p0"], rb.state_dict()["exp_avg_sq/p0"]));
}

}  // namespace
}  // namespace hetmoe
