// The three kernel implementations behind the operators (native, portable, naive reference) give
// the same values and gradients through the autograd operators: the naive table is what
// `hetmoe check --kernels` holds the optimised kernels to, so it must itself be right.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "hetmoe/core/error.h"
#include "hetmoe/ops/moe_ops.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

struct Case {
  int64_t tokens, hidden, experts, top_k, ffn;
  bool sigmoid;
  int64_t capacity;  // -1: dropless
  bool bias;
};

// Everything the four operators produce for one input, by name: outputs and gradients.
std::map<std::string, at::Tensor> layer(const Case& c, ops::KernelImpl impl) {
  ops::KernelImplGuard guard(impl);
  at::manual_seed(c.tokens + 7 * c.experts);
  at::Tensor x = at::randn({c.tokens, c.hidden}).requires_grad_(true);
  at::Tensor logits = at::randn({c.tokens, c.experts}).requires_grad_(true);
  at::Tensor w13 = (at::randn({c.experts, c.hidden, 2 * c.ffn}) * 0.1).requires_grad_(true);
  at::Tensor w2 = (at::randn({c.experts, c.ffn, c.hidden}) * 0.1).requires_grad_(true);
  RouteParams p;
  p.top_k = c.top_k;
  p.sigmoid = c.sigmoid;
  if (c.bias) p.bias = at::linspace(-0.5, 0.5, c.experts);
  RouteResult r = ops::route(logits, p);
  PermuteOptions cap;
  if (c.capacity >= 0) {
    cap.capacity = c.capacity;
    cap.priority = r.scores.detach().gather(1, r.expert_index);
  }
  PermuteResult perm = ops::permute(x, r.expert_index, c.experts, cap);
  at::Tensor y = ops::expert_ffn(perm.permuted, w13, w2, perm.tokens_per_expert);
  at::Tensor out = ops::unpermute(y, r.expert_weight, perm);
  at::Tensor g = at::randn_like(out), gs = at::randn_like(r.scores);
  ((out * g).sum() + (r.scores * gs).sum()).backward();
  return {{"index", r.expert_index},
          {"scores", r.scores},
          {"weights", r.expert_weight},
          {"row_of_slot", perm.row_of_slot},
          {"dropped", perm.dropped},
          {"permuted", perm.permuted},
          {"y", y},
          {"out", out},
          {"grad x", x.grad()},
          {"grad logits", logits.grad()},
          {"grad w13", w13.grad()},
          {"grad w2", w2.grad()}};
}

class KernelImplTest : public ::testing::TestWithParam<Case> {};

TEST_P(KernelImplTest, NativePortableAndReferenceAgree) {
  const Case c = GetParam();
  const auto reference = layer(c, ops::KernelImpl::Reference);
  for (ops::KernelImpl impl : {ops::KernelImpl::Native, ops::KernelImpl::Portable}) {
    const auto got = layer(c, impl);
    for (const auto& [name, want] : reference) {
      SCOPED_TRACE(ops::to_string(impl) + " " + name);
      if (!want.is_floating_point()) {
        EXPECT_TRUE(at::equal(got.at(name), want));
      } else {
        EXPECT_CLOSE(got.at(name), want, 1e-5);
      }
    }
  }
  EXPECT_EQ(ops::kernel_impl(), ops::KernelImpl::Native) << "the guard restores the default";
}

INSTANTIATE_TEST_SUITE_P(Cases, KernelImplTest,
                         ::testing::Values(Case{33, 16, 8, 2, 12, false, -1, false},
                                           Case{64, 8, 4, 3, 6, true, -1, true},
                                           Case{40, 12, 6, 2, 10, false, 9, false},
                                           Case{1, 8, 4, 4, 4, false, -1, false}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return "n" + std::to_string(c.tokens) + "_e" +
                                  std::to_string(c.experts) + "_k" + std::to_string(c.top_k) +
                                  (c.sigmoid ? "_sigmoid" : "") +
                                  (c.capacity >= 0 ? "_capacity" : "") + (c.bias ? "_bias" : "");
                         });

// Rows where selection has ties or the scores degenerate: every table must choose alike (ties
// to the lower expert id, NaN last) and underflowing sigmoid scores must give weights of 0, not
// 0/0, with finite gradients.
TEST(KernelImplTest, TiesNanAndUnderflowChooseAlikeOnEveryTable) {
  const int64_t e = 8;
  at::Tensor rows = at::zeros({4, e});
  rows[1].fill_(std::nan(""));
  rows[2].fill_(-200.0);  // sigmoid(-200) is 0 in fp32
  rows[3] = at::tensor({1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0});
  for (const int grouped : {0, 1, 2}) {  // no groups; groups scored by their best one, two
    RouteParams p;
    p.top_k = 3;
    p.sigmoid = true;
    p.renormalize = true;
    if (grouped) p.n_groups = 4, p.topk_groups = 2, p.group_members = grouped;
    std::map<ops::KernelImpl, at::Tensor> index;
    for (ops::KernelImpl impl :
         {ops::KernelImpl::Native, ops::KernelImpl::Portable, ops::KernelImpl::Reference}) {
      SCOPED_TRACE(ops::to_string(impl) + " groups " + std::to_string(grouped));
      ops::KernelImplGuard guard(impl);
      at::Tensor logits = rows.clone().requires_grad_(true);
      RouteResult r = ops::route(logits, p);
      index[impl] = r.expert_index;
      EXPECT_TRUE(at::equal(r.expert_index[0], at::arange(3, at::kLong))) << r.expert_index[0];
      EXPECT_TRUE(at::equal(r.expert_index[1], at::arange(3, at::kLong))) << r.expert_index[1];
      EXPECT_TRUE(at::equal(r.expert_weight[2], at::zeros({3}))) << r.expert_weight[2];
      (r.expert_weight.narrow(0, 2, 1).sum() + r.expert_weight.narrow(0, 0, 1).sum()).backward();
      EXPECT_TRUE(logits.grad().narrow(0, 2, 1).isfinite().all().item<bool>());
    }
    EXPECT_TRUE(at::equal(index[ops::KernelImpl::Portable], index[ops::KernelImpl::Native]));
    EXPECT_TRUE(at::equal(index[ops::KernelImpl::Reference], index[ops::KernelImpl::Native]));
  }
}

// A row with NaN scores inside a chosen group and top_k beyond its finite experts: the experts
// still come from the chosen groups only (the NaN one last), on every table.
TEST(KernelImplTest, PartlyNanRowsChooseInsideTheChosenGroups) {
  const float nan = std::nanf("");
  at::Tensor row = at::tensor({5.0f, 4.0f, nan, nan, nan, nan, 1.0f, nan}).view({1, 8});
  RouteParams p;
  p.top_k = 4;
  p.sigmoid = true;
  p.n_groups = 4;
  p.topk_groups = 2;  // groups 0 {5, 4} and 3 {1, NaN}
  for (ops::KernelImpl impl :
       {ops::KernelImpl::Native, ops::KernelImpl::Portable, ops::KernelImpl::Reference}) {
    ops::KernelImplGuard guard(impl);
    EXPECT_TRUE(at::equal(ops::route(row, p).expert_index[0], at::tensor({0, 1, 6, 7}, at::kLong)))
        << ops::to_string(impl) << ": " << ops::route(row, p).expert_index;
  }
}

// Infinite biases of both signs in one group make its score NaN (+inf + -inf): it ranks last on
// every table, and every chosen expert is a real one.
TEST(KernelImplTest, GroupWithOppositeInfiniteBiasesRanksLastOnEveryTable) {
  const float inf = INFINITY;
  RouteParams p;
  p.top_k = 3;
  p.sigmoid = true;
  p.n_groups = 2;
  p.topk_groups = 2;  // the second pick must still find the NaN-scored group
  p.group_members = 2;
  p.bias = at::tensor({inf, -inf, 0.0f, 0.0f});
  for (ops::KernelImpl impl :
       {ops::KernelImpl::Native, ops::KernelImpl::Portable, ops::KernelImpl::Reference}) {
    ops::KernelImplGuard guard(impl);
    RouteResult r = ops::route(at::zeros({3, 4}), p);
    EXPECT_TRUE(at::equal(r.expert_index, at::tensor({0, 2, 3}, at::kLong).repeat({3, 1})))
        << ops::to_string(impl) << ": " << r.expert_index;
    EXPECT_TRUE(at::equal(r.tokens_per_expert, at::tensor({3, 0, 3, 3}, at::kLong)))
        << ops::to_string(impl) << ": " << r.tokens_per_expert;
  }
}

TEST(KernelImplTest, NamesRoundTripAndUnknownIsRefused) {
  for (ops::KernelImpl k :
       {ops::KernelImpl::Native, ops::KernelImpl::Portable, ops::KernelImpl::Reference})
    EXPECT_EQ(ops::parse_kernel_impl(ops::to_string(k)), k);
  EXPECT_THROW(ops::parse_kernel_impl("fast"), Error);
}

}  // namespace
}  // namespace hetmoe
