// The CPU backend's own kernels (kernels/cpu) against the portable ATen kernels and the naive
// references: exact expert choice and row maps, values within 1e-5 (fp32), capacity dropping,
// the oneDNN GEMM against LibTorch's, and both oneDNN copies working in one process.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <tuple>

#include "hetmoe/core/error.h"
#include "hetmoe/ops/moe_ops.h"
#include "hetmoe/ops/reference.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/dnnl_gemm.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

const MoEKernels& cpu_table() {
  return cpu::cpu_moe_kernels();
}
const MoEKernels& aten_table() {
  return aten_moe_kernels();
}

struct Shape {
  int64_t tokens, hidden, experts, top_k, groups, topk_groups;
};

class CpuKernelsTest : public ::testing::TestWithParam<std::tuple<Shape, bool, bool, bool>> {};

TEST_P(CpuKernelsTest, MatchTheAtenKernelsExactlyInChoiceAndClosely) {
  const auto [sh, sigmoid, renorm, biased] = GetParam();
  at::manual_seed(sh.tokens * 13 + sh.experts);
  RouteParams p;
  p.top_k = sh.top_k;
  p.sigmoid = sigmoid;
  p.renormalize = renorm;
  p.n_groups = sh.groups;
  p.topk_groups = sh.topk_groups;
  if (biased) p.bias = at::randn({sh.experts}) * 0.1;
  at::Tensor logits = at::randn({sh.tokens, sh.experts});
  RouteResult a = cpu_table().route_forward(logits, p), b = aten_table().route_forward(logits, p);
  ASSERT_TRUE(at::equal(a.expert_index, b.expert_index));
  EXPECT_TRUE(at::equal(a.tokens_per_expert, b.tokens_per_expert));
  EXPECT_CLOSE(a.scores, b.scores, 1e-6);
  EXPECT_CLOSE(a.expert_weight, b.expert_weight, 1e-6);
  at::Tensor gs = at::randn_like(a.scores), gw = at::randn_like(a.expert_weight);
  for (const at::Tensor& g : {gs, at::Tensor()}) {
    EXPECT_CLOSE(cpu_table().route_backward(g, gw, a.scores, a.expert_index, p),
                 aten_table().route_backward(g, gw, b.scores, b.expert_index, p), 1e-5);
  }

  at::Tensor x = at::randn({sh.tokens, sh.hidden});
  PermuteResult pa = cpu_table().permute_forward(x, a.expert_index, sh.experts, {});
  PermuteResult pb = aten_table().permute_forward(x, b.expert_index, sh.experts, {});
  for (auto [u, v] : {std::pair{pa.permuted, pb.permuted},
                      {pa.source_row, pb.source_row},
                      {pa.slot, pb.slot},
                      {pa.row_of_slot, pb.row_of_slot},
                      {pa.tokens_per_expert, pb.tokens_per_expert},
                      {pa.dropped, pb.dropped}})
    EXPECT_TRUE(at::equal(u, v));
  at::Tensor grows = at::randn_like(pa.permuted);
  EXPECT_CLOSE(cpu_table().permute_backward(grows, pa.row_of_slot, sh.top_k),
               aten_table().permute_backward(grows, pb.row_of_slot, sh.top_k), 1e-6);

  at::Tensor w13 = at::randn({sh.experts, sh.hidden, 2 * 6}) * 0.3;
  at::Tensor w2 = at::randn({sh.experts, 6, sh.hidden}) * 0.3;
  at::Tensor ha, hb;
  at::Tensor ya = cpu_table().expert_ffn_forward(pa.permuted, w13, w2, pa.tokens_per_expert, &ha);
  at::Tensor yb = aten_table().expert_ffn_forward(pb.permuted, w13, w2, pb.tokens_per_expert, &hb);
  EXPECT_CLOSE(ya, yb, 1e-5);
  at::Tensor gy = at::randn_like(ya);
  auto ga = cpu_table().expert_ffn_backward(gy, pa.permuted, ha, w13, w2, pa.tokens_per_expert);
  auto gb = aten_table().expert_ffn_backward(gy, pb.permuted, hb, w13, w2, pb.tokens_per_expert);
  EXPECT_CLOSE(std::get<0>(ga), std::get<0>(gb), 1e-5);
  EXPECT_CLOSE(std::get<1>(ga), std::get<1>(gb), 1e-5);
  EXPECT_CLOSE(std::get<2>(ga), std::get<2>(gb), 1e-5);

  EXPECT_CLOSE(cpu_table().unpermute_forward(ya, a.expert_weight, pa.row_of_slot),
               aten_table().unpermute_forward(ya, a.expert_weight, pa.row_of_slot), 1e-6);
  at::Tensor gout = at::randn_like(x);
  auto ua = cpu_table().unpermute_backward(gout, ya, a.expert_weight, pa.row_of_slot, pa.slot);
  auto ub = aten_table().unpermute_backward(gout, ya, a.expert_weight, pa.row_of_slot, pa.slot);
  EXPECT_CLOSE(ua.first, ub.first, 1e-6);
  EXPECT_CLOSE(ua.second, ub.second, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuKernelsTest,
    ::testing::Combine(::testing::Values(Shape{37, 24, 8, 2, 1, 1},    // random-ish shape
                                         Shape{1, 16, 4, 2, 1, 1},     // a single token
                                         Shape{5, 8, 16, 3, 1, 1},     // most experts idle
                                         Shape{9, 8, 4, 4, 1, 1},      // top_k == experts
                                         Shape{64, 32, 64, 6, 8, 3}),  // Ling-style groups
                       ::testing::Bool(), ::testing::Bool(), ::testing::Bool()));

TEST(CpuKernelsTest, TiesChooseTheLowerExpertLikeTheGpuRouter) {
  RouteParams p;
  p.top_k = 2;
  RouteResult r = cpu_table().route_forward(at::zeros({3, 5}), p);
  EXPECT_TRUE(at::equal(r.expert_index, at::tensor({0, 1, 0, 1, 0, 1}, at::kLong).view({3, 2})));
}

// Unstable training can put NaN into the router's logits before the loss shows it. Each token
// must still choose k distinct experts inside [0, e): an index outside it would corrupt the
// permutation and, on a GPU, memory.
TEST(CpuKernelsTest, NanLogitsStillChooseKDistinctExpertsInRange) {
  at::Tensor logits = at::randn({6, 16});
  logits[0].fill_(NAN);
  logits[1][3] = NAN;
  logits[2][0] = logits[2][15] = NAN;
  for (const bool sigmoid : {false, true}) {
    for (const MoEKernels* table : {&cpu_table(), &aten_table()}) {
      RouteParams p{3, sigmoid, true, 4, 2};
      RouteResult r = table->route_forward(logits, p);
      auto idx = r.expert_index.accessor<int64_t, 2>();
      for (int64_t t = 0; t < 6; ++t) {
        std::set<int64_t> chosen;
        for (int64_t j = 0; j < 3; ++j) {
          EXPECT_GE(idx[t][j], 0);
          EXPECT_LT(idx[t][j], 16);
          chosen.insert(idx[t][j]);
        }
        EXPECT_EQ(chosen.size(), 3u) << table->implementation << ", token " << t;
      }
      EXPECT_EQ(r.tokens_per_expert.sum().item<int64_t>(), 18);
      if (sigmoid) EXPECT_NE(idx[1][0], 3);  // a NaN expert ranks last
    }
  }
}

TEST(CpuKernelsTest, Bf16CombineMatchesFp32WithinBf16Precision) {
  at::manual_seed(5);
  at::Tensor y = at::randn({12, 64}), w = at::rand({6, 2});
  at::Tensor ros = at::randperm(12, at::kLong);
  at::Tensor f = cpu_table().unpermute_forward(y, w, ros);
  at::Tensor b = cpu_table().unpermute_forward(y.to(at::kBFloat16), w, ros);
  EXPECT_EQ(b.scalar_type(), at::kBFloat16);
  EXPECT_CLOSE(b, f, 1e-2);
}

// ---- capacity -------------------------------------------------------------------------------

TEST(CapacityTest, DropsLowestPriorityFirstAndCounts) {
  // 6 tokens, top-1, 2 experts, capacity 2. Expert 0 gets tokens 0,1,3,4 with priorities
  // .9 .2 .5 .2: it keeps 0 and 3 and drops 1 and 4 (tie .2/.2: the later slot, 4, goes first
  // only after 1 since both are beyond capacity). Expert 1 gets 2 and 5: both kept.
  at::Tensor idx = at::tensor({0, 0, 1, 0, 0, 1}, at::kLong).view({6, 1});
  at::Tensor prio = at::tensor({.9f, .2f, .1f, .5f, .2f, .3f}).view({6, 1});
  at::Tensor x = at::arange(12, at::kFloat).view({6, 2});
  for (const MoEKernels* t : {&cpu_table(), &aten_table()}) {
    PermuteResult r = t->permute_forward(x, idx, 2, PermuteOptions{2, prio});
    EXPECT_EQ(r.dropped.item<int64_t>(), 2) << t->implementation;
    EXPECT_TRUE(at::equal(r.tokens_per_expert, at::tensor({2, 2}, at::kLong)));
    EXPECT_TRUE(at::equal(r.slot, at::tensor({0, 3, 2, 5}, at::kLong))) << t->implementation;
    EXPECT_TRUE(at::equal(r.row_of_slot, at::tensor({0, -1, 2, 1, -1, 3}, at::kLong)));
    EXPECT_TRUE(at::equal(r.permuted, x.index_select(0, r.source_row)));
  }
}

TEST(CapacityTest, KeepsTheSlotsTheReferenceKeepsOnRandomRouting) {
  at::manual_seed(11);
  const int64_t n = 50, e = 6, k = 3;
  at::Tensor logits = at::randn({n, e});
  RouteParams p;
  p.top_k = k;
  RouteResult r = ops::route(logits, p);
  at::Tensor prio = r.scores.gather(1, r.expert_index);
  for (int64_t cap : {0, 5, 20, 25, 1000}) {
    at::Tensor keep = ops::reference::capacity_keep(r.expert_index, prio, e, cap);
    for (const MoEKernels* t : {&cpu_table(), &aten_table()}) {
      PermuteResult pr = t->permute_forward(at::randn({n, 4}), r.expert_index, e, {cap, prio});
      EXPECT_EQ(pr.dropped.item<int64_t>(), n * k - keep.sum().item<int64_t>());
      EXPECT_TRUE(at::equal(pr.row_of_slot >= 0, keep)) << t->implementation << " cap " << cap;
      EXPECT_LE(pr.tokens_per_expert.max().item<int64_t>(), cap);
    }
  }
}

TEST(CapacityTest, DroppedSlotsContributeNothingAndGetNoGradient) {
  at::manual_seed(12);
  const int64_t n = 24, h = 8, e = 4, k = 2, f = 5;
  at::Tensor logits = at::randn({n, e});
  RouteParams p;
  p.top_k = k;
  RouteResult r = ops::route(logits, p);
  at::Tensor prio = r.scores.gather(1, r.expert_index);
  const int64_t cap = 7;  // 48 slots over 4 experts: some must go
  auto leaf = [](const at::Tensor& t) { return t.clone().requires_grad_(true); };
  at::Tensor x = at::randn({n, h}), w13 = at::randn({e, h, 2 * f}) * 0.3;
  at::Tensor w2 = at::randn({e, f, h}) * 0.3, weight = r.expert_weight.detach();
  at::Tensor x1 = leaf(x), a1 = leaf(w13), b1 = leaf(w2), g1 = leaf(weight);
  at::Tensor x2 = leaf(x), a2 = leaf(w13), b2 = leaf(w2), g2 = leaf(weight);

  PermuteResult perm = ops::permute(x1, r.expert_index, e, {cap, prio});
  ASSERT_GT(perm.dropped.item<int64_t>(), 0);
  at::Tensor out =
      ops::unpermute(ops::expert_ffn(perm.permuted, a1, b1, perm.tokens_per_expert), g1, perm);
  at::Tensor keep = ops::reference::capacity_keep(r.expert_index, prio, e, cap).view({n, k});
  at::Tensor ref = ops::reference::moe_experts(x2, r.expert_index, g2 * keep, a2, b2);
  EXPECT_CLOSE(out, ref, 1e-5);
  at::Tensor go = at::randn_like(out);
  (out * go).sum().backward();
  (ref * go).sum().backward();
  EXPECT_CLOSE(x1.grad(), x2.grad(), 1e-5);
  EXPECT_CLOSE(a1.grad(), a2.grad(), 1e-5);
  EXPECT_CLOSE(b1.grad(), b2.grad(), 1e-5);
  EXPECT_CLOSE(g1.grad(), g2.grad(), 1e-5);
  EXPECT_EQ(g1.grad().masked_select(keep.logical_not()).abs().sum().item<float>(), 0.0f);
}

TEST(CapacityTest, RequiresAPriority) {
  EXPECT_ANY_THROW(ops::permute(at::randn({4, 2}), at::zeros({4, 1}, at::kLong), 2, {1, {}}));
}

// ---- GEMM -----------------------------------------------------------------------------------

TEST(CpuMatmulTest, MatchesLibTorchForTransposedViewsAndAccumulation) {
  at::manual_seed(21);
  for (auto [m, k, n] :
       {std::tuple<int64_t, int64_t, int64_t>{33, 17, 9}, {1, 64, 5}, {64, 1, 7}, {128, 256, 96}}) {
    at::Tensor a = at::randn({m, k}), b = at::randn({k, n});
    at::Tensor at_ = a.t().contiguous().t(), bt = b.t().contiguous().t();  // column-major views
    for (const auto& [x, y] : {std::pair{a, b}, {at_, b}, {a, bt}, {at_, bt}}) {
      at::Tensor out = at::empty({m, n});
      cpu::cpu_matmul(out, x, y, false);
      EXPECT_CLOSE(out, at::mm(a, b), 1e-6);
      at::Tensor acc = at::ones({m, n});
      cpu::cpu_matmul(acc, x, y, true);
      EXPECT_CLOSE(acc, at::mm(a, b) + 1, 1e-6);
    }
    // A strided (non-unit inner stride) output and a sliced input still come out right.
    at::Tensor wide = at::zeros({m, 2 * n});
    cpu::cpu_matmul(wide.narrow(1, n, n), a, b, false);
    EXPECT_CLOSE(wide.narrow(1, n, n), at::mm(a, b), 1e-6);
    EXPECT_EQ(wide.narrow(1, 0, n).abs().sum().item<float>(), 0.0f);
  }
  at::Tensor z = at::full({3, 4}, 7.0f);
  cpu::cpu_matmul(z, at::empty({3, 0}), at::empty({0, 4}), false);  // k == 0: zeros
  EXPECT_EQ(z.abs().sum().item<float>(), 0.0f);
}

// In bf16 the GEMM is split into a multiple of 64 rows and the rest, and likewise along the
// reduction: every split (and none) gives LibTorch's product within bf16 rounding, transposed
// views, accumulation and row slices of a larger output included.
TEST(CpuMatmulTest, Bf16SplitsIntoFewShapesAndKeepsTheProduct) {
  at::manual_seed(23);
  for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 3},
                         {63, 64, 8},
                         {64, 63, 8},
                         {65, 130, 16},
                         {200, 129, 24},
                         {130, 700, 5},
                         {0, 70, 4}}) {
    const at::Tensor a = at::randn({m, k}), b = at::randn({k, n});
    const at::Tensor ab = a.to(at::kBFloat16), bb = b.to(at::kBFloat16);
    const at::Tensor want = at::mm(ab.to(at::kFloat), bb.to(at::kFloat));  // exact products
    const at::Tensor at_ = ab.t().contiguous().t(), bt = bb.t().contiguous().t();
    for (const auto& [x, y] : {std::pair{ab, bb}, {at_, bb}, {ab, bt}, {at_, bt}}) {
      at::Tensor big = at::full({m + 5, n}, 3.0, at::kBFloat16);
      at::Tensor out = big.narrow(0, 2, m);
      cpu::cpu_matmul(out, x, y, false);
      EXPECT_CLOSE(out.to(at::kFloat), want, 1e-2);
      EXPECT_EQ(big.narrow(0, 0, 2).to(at::kFloat).sub(3).abs().sum().item<float>(), 0.0f);
      EXPECT_EQ(big.narrow(0, m + 2, 3).to(at::kFloat).sub(3).abs().sum().item<float>(), 0.0f);
      cpu::cpu_matmul(out, x, y, true);  // out += x @ y: twice the product now
      EXPECT_CLOSE(out.to(at::kFloat), want * 2, 1e-2);
    }
  }
}

TEST(LinearOpTest, MatchesAtLinearInValuesAndGradients) {
  at::manual_seed(22);
  at::Tensor x = at::randn({2, 5, 12}), w = at::randn({7, 12});
  at::Tensor x1 = x.clone().requires_grad_(true), w1 = w.clone().requires_grad_(true);
  at::Tensor x2 = x.clone().requires_grad_(true), w2 = w.clone().requires_grad_(true);
  at::Tensor y1 = ops::linear(x1, w1), y2 = at::linear(x2, w2);
  EXPECT_CLOSE(y1, y2, 1e-6);
  at::Tensor g = at::randn_like(y1);
  (y1 * g).sum().backward();
  (y2 * g).sum().backward();
  EXPECT_CLOSE(x1.grad(), x2.grad(), 1e-6);
  EXPECT_CLOSE(w1.grad(), w2.grad(), 1e-6);
  EXPECT_THROW(ops::linear(at::randn({3, 5}), at::randn({4, 6})), Error);
}

// ---- oneDNN and LibTorch in one process ------------------------------------------------------

std::set<std::string> mapped_libraries(const std::string& needle) {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> found;
  std::string line;
  while (std::getline(maps, line)) {
    auto slash = line.find('/');
    if (slash != std::string::npos && line.find(needle, slash) != std::string::npos)
      found.insert(line.substr(slash));
  }
  return found;
}

TEST(DnnlCoexistenceTest, LibTorchAndHetmoeOneDnnServeCallsInOneProcess) {
#if !HETMOE_EXPECT_DNNL
  GTEST_SKIP() << "built without Debian's oneDNN (libdnnl-dev): " << cpu::dnnl_status();
#endif
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "sanitizer build: " << cpu::dnnl_status();
#endif
  if (const char* v = std::getenv("HETMOE_DNNL_LIBRARY"); v && std::string(v) == "off")
    GTEST_SKIP() << "oneDNN switched off by HETMOE_DNNL_LIBRARY=off";
  const cpu::DnnlGemm* dnnl = cpu::dnnl_gemm();
  ASSERT_NE(dnnl, nullptr) << cpu::dnnl_status();
  at::manual_seed(23);
  at::Tensor a = at::randn({96, 80}), b = at::randn({80, 64});
  at::Tensor before = at::mm(a, b);                                  // LibTorch's BLAS
  at::Tensor bf = at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16));  // LibTorch's own oneDNN
  at::Tensor ours = at::empty({96, 64});
  ASSERT_EQ(dnnl->sgemm('N', 'N', 96, 64, 80, 1.0f, a.data_ptr<float>(), 80, b.data_ptr<float>(),
                        64, 0.0f, ours.data_ptr<float>(), 64),
            0);
  at::Tensor after = at::mm(a, b);
  at::Tensor bf_after = at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16));
  EXPECT_CLOSE(ours, before, 1e-6);
  EXPECT_TRUE(at::equal(before, after));
  EXPECT_TRUE(at::equal(bf, bf_after));
  EXPECT_CLOSE(bf.to(at::kFloat), before, 2e-2);
  // The module and the Debian oneDNN it was built against are both mapped, and a single OpenMP
  // runtime serves LibTorch and oneDNN (two would fight over the cores).
  EXPECT_EQ(mapped_libraries("libhetmoe_dnnl.so").size(), 1u);
  EXPECT_EQ(mapped_libraries("libdnnl.so").size(), 1u);
  EXPECT_EQ(mapped_libraries("libgomp").size(), 1u);
}

}  // namespace
}  // namespace hetmoe
