// Every MoE operator on each GPU backend equals the CPU backend on the same inputs, values and
// gradients, within a per-dtype bound (the test-backend-ops idea: every new op gets a case here).
// Skips cleanly where no GPU is visible.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "hetmoe/device/registry.h"
#include "hetmoe/ops/moe_ops.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

const Backend* first_gpu() {
  for (const Backend* b : backends())
    if (b->kind() != BackendKind::CPU && b->available()) return b;
  return nullptr;
}

struct Case {
  int64_t tokens, hidden, experts, top_k, ffn;
};

struct Outputs {
  RouteResult route;
  PermuteResult perm;
  at::Tensor out, gx, gw13, gw2, glogits;
};

Outputs run_layer(const at::Tensor& x0, const at::Tensor& logits0, const at::Tensor& w130,
                  const at::Tensor& w20, const at::Tensor& go0, c10::Device dev, at::ScalarType dt,
                  const RouteParams& p) {
  // Fresh leaves on `dev`, never the caller's tensors.
  auto leaf = [&](const at::Tensor& t, at::ScalarType type) {
    return t.to(dev, type, false, /*copy=*/true).requires_grad_(true);
  };
  at::Tensor x = leaf(x0, dt), logits = leaf(logits0, at::kFloat);
  at::Tensor w13 = leaf(w130, dt), w2 = leaf(w20, dt);
  Outputs o;
  o.route = ops::route(logits, p);
  o.perm = ops::permute(x, o.route.expert_index, w13.size(0));
  at::Tensor y = ops::expert_ffn(o.perm.permuted, w13, w2, o.perm.tokens_per_expert);
  o.out = ops::unpermute(y, o.route.expert_weight, o.perm);
  // The scores feed the aux loss in the model: give them a gradient too.
  ((o.out.to(at::kFloat) * go0.to(dev)).sum() + o.route.scores.sum(0).pow(2).sum()).backward();
  o.gx = x.grad();
  o.gw13 = w13.grad();
  o.gw2 = w2.grad();
  o.glogits = logits.grad();
  return o;
}

class GpuConsistencyTest
    : public ::testing::TestWithParam<std::tuple<Case, at::ScalarType, bool, bool>> {};

TEST_P(GpuConsistencyTest, MoEOperatorsMatchTheCpuBackend) {
  const Backend* gpu = first_gpu();
  if (!gpu)
    GTEST_SKIP() << "no GPU visible to this build (CUDA backend "
                 << (backends().front()->kind() == BackendKind::CPU ? "not built" : "built") << ")";
  const auto [c, dt, sigmoid, renorm] = GetParam();
  at::manual_seed(11 + c.tokens);
  at::Tensor x = at::randn({c.tokens, c.hidden}), logits = at::randn({c.tokens, c.experts});
  at::Tensor w13 = at::randn({c.experts, c.hidden, 2 * c.ffn}) * 0.1;
  at::Tensor w2 = at::randn({c.experts, c.ffn, c.hidden}) * 0.1;
  at::Tensor go = at::randn({c.tokens, c.hidden});
  // fp32 on the GPU must not use TF32 for this comparison.
  at::globalContext().setAllowTF32CuBLAS(false);
  const RouteParams p{c.top_k, sigmoid, renorm};
  Outputs cpu = run_layer(x, logits, w13, w2, go, c10::Device(c10::kCPU), dt, p);
  Outputs dev = run_layer(x, logits, w13, w2, go, gpu->torch_device(0), dt, p);

  // Integer outputs must agree exactly: same selection, same stable expert order.
  EXPECT_TRUE(at::equal(dev.route.expert_index.cpu(), cpu.route.expert_index));
  EXPECT_TRUE(at::equal(dev.route.tokens_per_expert.cpu(), cpu.route.tokens_per_expert));
  EXPECT_TRUE(at::equal(dev.perm.slot.cpu(), cpu.perm.slot));
  EXPECT_TRUE(at::equal(dev.perm.row_of_slot.cpu(), cpu.perm.row_of_slot));
  EXPECT_TRUE(at::equal(dev.perm.tokens_per_expert.cpu(), cpu.perm.tokens_per_expert));
  EXPECT_CLOSE(dev.route.scores, cpu.route.scores, 1e-6);
  EXPECT_CLOSE(dev.route.expert_weight, cpu.route.expert_weight, 1e-6);
  EXPECT_TRUE(at::equal(dev.perm.permuted.cpu(), cpu.perm.permuted));

  const double tol = dt == at::kFloat ? 1e-5 : 1e-2;
  EXPECT_CLOSE(dev.out, cpu.out, tol);
  EXPECT_CLOSE(dev.gx, cpu.gx, tol);
  EXPECT_CLOSE(dev.gw13, cpu.gw13, tol);
  EXPECT_CLOSE(dev.gw2, cpu.gw2, tol);
  EXPECT_CLOSE(dev.glogits, cpu.glogits, tol);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, GpuConsistencyTest,
    ::testing::Combine(::testing::Values(Case{300, 64, 16, 4, 48},  // ordinary
                                         Case{5, 32, 16, 2, 16},    // most experts get nothing
                                         Case{33, 64, 8, 8, 32},    // top_k == num_experts
                                         Case{7, 12, 4, 2, 6}),     // rows not 16-byte multiples
                       ::testing::Values(at::kFloat, at::kBFloat16), ::testing::Bool(),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<GpuConsistencyTest::ParamType>& info) {
      const Case& c = std::get<0>(info.param);
      return "n" + std::to_string(c.tokens) + "_h" + std::to_string(c.hidden) + "_e" +
             std::to_string(c.experts) + "_k" + std::to_string(c.top_k) +
             (std::get<1>(info.param) == at::kFloat ? "_fp32" : "_bf16") +
             (std::get<2>(info.param) ? "_sigmoid" : "_softmax") +
             (std::get<3>(info.param) ? "_renorm" : "");
    });

}  // namespace
}  // namespace hetmoe

namespace hetmoe {
namespace {

// Expert bias and group-limited routing on the GPU router kernel against the CPU backend.
TEST(GpuRouterTest, BiasAndGroupLimitedSelectionMatchTheCpuBackend) {
  const Backend* gpu = first_gpu();
  if (!gpu) GTEST_SKIP() << "no GPU visible to this build";
  at::manual_seed(3);
  const int64_t n = 500, e = 64;
  for (const bool sigmoid : {false, true}) {
    RouteParams p{6, sigmoid, true, 8, 3, /*group_members=*/sigmoid ? 2 : 1};
    p.bias = at::randn({e}) * 0.05;
    at::Tensor logits = at::randn({n, e});
    at::Tensor lc = logits.clone().requires_grad_(true);
    at::Tensor lg = logits.to(gpu->torch_device(0)).requires_grad_(true);
    RouteResult c = ops::route(lc, p), g = ops::route(lg, p);
    EXPECT_TRUE(at::equal(g.expert_index.cpu(), c.expert_index));
    EXPECT_TRUE(at::equal(g.tokens_per_expert.cpu(), c.tokens_per_expert));
    EXPECT_CLOSE(g.expert_weight, c.expert_weight, 1e-6);
    at::Tensor gw = at::randn_like(c.expert_weight);
    (c.expert_weight * gw).sum().backward();
    (g.expert_weight * gw.to(lg.device())).sum().backward();
    EXPECT_CLOSE(lg.grad(), lc.grad(), 1e-5);
  }
}

// NaN logits: the GPU router chooses what the CPU router chooses (k distinct experts in range),
// never an index outside the expert table.
TEST(GpuRouterTest, NanLogitsChooseLikeTheCpuBackend) {
  const Backend* gpu = first_gpu();
  if (!gpu) GTEST_SKIP() << "no GPU visible to this build";
  at::manual_seed(4);
  at::Tensor logits = at::randn({64, 32});
  // A few bad rows among good ones: one all NaN, one with a single NaN (all NaN after a softmax,
  // one NaN expert under a sigmoid), one with several.
  logits[0].fill_(NAN);
  logits[5][7] = NAN;
  logits[9][0] = logits[9][31] = logits[9][16] = NAN;
  for (const bool sigmoid : {false, true}) {
    RouteParams p{4, sigmoid, true, 4, 2};
    RouteResult c = ops::route(logits, p), g = ops::route(logits.to(gpu->torch_device(0)), p);
    EXPECT_TRUE(at::equal(g.expert_index.cpu(), c.expert_index));
    EXPECT_TRUE(at::equal(g.tokens_per_expert.cpu(), c.tokens_per_expert));
  }
}

}  // namespace
}  // namespace hetmoe
