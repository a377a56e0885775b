// Every MoE operator on each GPU backend equals the CPU backend on the same inputs, values and
// gradients, within a per-dtype bound (the test-backend-ops idea: every new op gets a case here).
// Skips cleanly where no GPU is visible; the kernel table's host-side limits are checked wherever
// a GPU backend is built.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "hetmoe/core/error.h"
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
  // The router runs the same fp32 operations on both (kernels/common/route_token.h, with its own
  // exp): scores and weights agree to the bit, which is what makes near-ties choose alike.
  EXPECT_TRUE(at::equal(dev.route.scores.cpu(), cpu.route.scores));
  EXPECT_TRUE(at::equal(dev.route.expert_weight.cpu(), cpu.route.expert_weight));
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
    EXPECT_TRUE(at::equal(g.expert_weight.cpu(), c.expert_weight));
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

namespace hetmoe {
namespace {

// The GPU backend whether or not a GPU is visible: its table's host-side checks run before
// anything reaches a device, so they are tested on every machine that builds it.
const Backend* gpu_backend_built() {
  for (const Backend* b : backends())
    if (b->kind() != BackendKind::CPU) return b;
  return nullptr;
}

TEST(GpuKernelLimitsTest, RouterAndPermuteRefuseMoreExpertsThanTheirKernelsTake) {
  const Backend* gpu = gpu_backend_built();
  if (!gpu) GTEST_SKIP() << "no GPU backend built";
  const MoEKernels& kernels = gpu->kernels();
  const at::Tensor x = at::zeros({4, 8}), index = at::zeros({4, 2}, at::kLong);
  for (const int64_t e : {int64_t{0}, int64_t{1025}, int64_t{4096}}) {
    try {
      kernels.permute_forward(x, index, e, PermuteOptions{});
      ADD_FAILURE() << "permute took " << e << " experts";
    } catch (const Error& err) {
      EXPECT_NE(
          std::string(err.what()).find("supports 1 to 1024 experts, got " + std::to_string(e)),
          std::string::npos)
          << err.what();
    }
  }
  EXPECT_THROW(kernels.route_forward(at::zeros({2, 1025}), RouteParams{2, false, true}), Error);
  // The backward keeps top_k floats per thread: a top_k the forward would refuse is refused here
  // too, should the forward have run on another table.
  EXPECT_THROW(kernels.route_backward(at::Tensor(), at::zeros({2, 33}), at::zeros({2, 64}),
                                      at::zeros({2, 33}, at::kLong), RouteParams{33, false, true}),
               Error);
}

// A bf16 input that is contiguous but starts off a 16-byte boundary (a view into a larger
// buffer), which at::_grouped_mm refuses: the experts still run, with the same result as an
// aligned copy, values and gradients.
TEST(GpuExpertFfnTest, MisalignedViewsGiveTheAlignedResult) {
  const Backend* gpu = first_gpu();
  if (!gpu) GTEST_SKIP() << "no GPU visible to this build";
  const c10::Device dev = gpu->torch_device(0);
  const int64_t m = 48, h = 64, f = 32, e = 4;
  const auto bf16 = at::TensorOptions(dev).dtype(at::kBFloat16);
  at::manual_seed(6);
  const at::Tensor buf = at::randn({m * h + 3}).to(bf16);
  const at::Tensor w13 = (at::randn({e, h, 2 * f}) * 0.1).to(bf16);
  const at::Tensor w2 = (at::randn({e, f, h}) * 0.1).to(bf16);
  const at::Tensor counts = at::tensor({10, 0, 30, 8}, at::kLong).to(dev);
  const at::Tensor go = at::randn({m, h}).to(bf16);
  auto run = [&](const at::Tensor& x0) {
    at::Tensor x = x0.detach().requires_grad_(true);
    at::Tensor y = ops::expert_ffn(x, w13, w2, counts);
    y.backward(go);
    return std::make_pair(y.detach().to(at::kFloat).cpu(), x.grad().to(at::kFloat).cpu());
  };
  const at::Tensor view = buf.narrow(0, 3, m * h).view({m, h});
  ASSERT_TRUE(view.is_contiguous());
  ASSERT_NE(reinterpret_cast<uintptr_t>(view.data_ptr()) % 16, 0u);
  const auto [y_view, gx_view] = run(view);
  const auto [y_copy, gx_copy] = run(view.clone());
  EXPECT_CLOSE(y_view, y_copy, 1e-2);
  EXPECT_CLOSE(gx_view, gx_copy, 1e-2);
}

// An expert that no token chose has a weight gradient of exactly zero, in bf16 with rows that
// _grouped_mm takes (it leaves zero-row groups unwritten on sm_100, pytorch/pytorch#172439).
// The allocator's cache is filled with NaN first, so an unwritten gradient would show.
TEST(GpuExpertFfnTest, ExpertsWithoutTokensGetExactlyZeroWeightGradients) {
  const Backend* gpu = first_gpu();
  if (!gpu) GTEST_SKIP() << "no GPU visible to this build";
  const c10::Device dev = gpu->torch_device(0);
  const int64_t n = 64, h = 64, f = 32, e = 8, k = 2;
  // Tokens choose among experts 0, 1, 2, 4, 5 and 7 only: 3 and 6 get no rows.
  const int64_t used[] = {0, 1, 2, 4, 5, 7};
  std::vector<int64_t> choice;
  for (int64_t t = 0; t < n; ++t) {
    choice.push_back(used[t % 6]);
    choice.push_back(used[(t + 1) % 6]);
  }
  const at::Tensor index = at::tensor(choice, at::kLong).view({n, k}).to(dev);
  const auto bf16 = at::TensorOptions(dev).dtype(at::kBFloat16);
  {
    std::vector<at::Tensor> poison;
    for (int i = 0; i < 4; ++i) {
      poison.push_back(at::full({e, h, 2 * f}, NAN, bf16));
      poison.push_back(at::full({e, f, h}, NAN, bf16));
    }
  }
  at::manual_seed(5);
  at::Tensor x = at::randn({n, h}).to(bf16).requires_grad_(true);
  at::Tensor w13 = (at::randn({e, h, 2 * f}) * 0.1).to(bf16).requires_grad_(true);
  at::Tensor w2 = (at::randn({e, f, h}) * 0.1).to(bf16).requires_grad_(true);
  const at::Tensor weight = at::rand({n, k}).to(dev);
  PermuteResult perm = ops::permute(x, index, e);
  at::Tensor y = ops::expert_ffn(perm.permuted, w13, w2, perm.tokens_per_expert);
  ops::unpermute(y, weight, perm).to(at::kFloat).sum().backward();
  for (const int64_t idle : {3, 6}) {
    EXPECT_EQ(w13.grad()[idle].count_nonzero().item<int64_t>(), 0) << "w13 of expert " << idle;
    EXPECT_EQ(w2.grad()[idle].count_nonzero().item<int64_t>(), 0) << "w2 of expert " << idle;
  }
  for (const int64_t busy : used) {
    EXPECT_TRUE(w13.grad()[busy].isfinite().all().item<bool>()) << "w13 of expert " << busy;
    EXPECT_GT(w2.grad()[busy].abs().sum().item<float>(), 0) << "w2 of expert " << busy;
  }
}

// An expert index outside [0, e) stops the permutation kernel at a device-side check: the CPU
// backend throws there, which the GPU cannot do without waiting for the device. The failed
// check leaves the GPU context unusable, so each case runs in a process of its own ("threadsafe"
// death tests start the test binary afresh instead of forking a process that holds a context).
TEST(GpuPermuteDeathTest, ExpertIndexOutsideTheTableStopsTheKernel) {
  const Backend* gpu = first_gpu();
  if (!gpu) GTEST_SKIP() << "no GPU visible to this build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const c10::Device dev = gpu->torch_device(0);
  auto permute_with = [&](int64_t bad) {
    try {
      at::Tensor index = at::zeros({8, 2}, at::TensorOptions(dev).dtype(at::kLong));
      index[5][1] = bad;
      PermuteResult r = ops::permute(at::randn({8, 16}, at::TensorOptions(dev)), index, 4);
      r.permuted.cpu();  // waits for the kernels
    } catch (const std::exception& err) {
      std::fprintf(stderr, "%s\n", err.what());
      std::abort();
    }
  };
  EXPECT_DEATH(permute_with(4), "assert");
  EXPECT_DEATH(permute_with(-1), "assert");
  // Checked as 64 bits: narrowed to int it would be expert 0.
  EXPECT_DEATH(permute_with(int64_t{1} << 32), "assert");
}

}  // namespace
}  // namespace hetmoe
