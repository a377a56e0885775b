// The MoE operators against their naive references: values and gradients, fp32, random shapes,
// experts with no tokens, every token on one expert, top_k == num_experts, a single token.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "hetmoe/core/error.h"
#include "hetmoe/ops/moe_ops.h"
#include "hetmoe/ops/reference.h"
#include "support/error_of.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

using test_support::rel_error;

struct Case {
  int64_t tokens, hidden, experts, top_k, ffn;
};

class MoEOpsTest : public ::testing::TestWithParam<std::tuple<Case, bool, bool>> {};

TEST_P(MoEOpsTest, RouteMatchesReferenceInValuesAndGradients) {
  const auto [c, sigmoid, renorm] = GetParam();
  at::manual_seed(c.tokens * 31 + c.experts);
  at::Tensor logits = at::randn({c.tokens, c.experts}, at::kFloat);
  at::Tensor l1 = logits.clone().requires_grad_(true), l2 = logits.clone().requires_grad_(true);
  RouteParams p{c.top_k, sigmoid, renorm};
  RouteResult a = ops::route(l1, p), b = ops::reference::route(l2, p);
  EXPECT_TRUE(at::equal(a.expert_index, b.expert_index));
  EXPECT_TRUE(at::equal(a.tokens_per_expert, b.tokens_per_expert));
  EXPECT_CLOSE(a.scores, b.scores, 1e-6);
  EXPECT_CLOSE(a.expert_weight, b.expert_weight, 1e-6);
  at::Tensor gs = at::randn_like(a.scores), gw = at::randn_like(a.expert_weight);
  ((a.scores * gs).sum() + (a.expert_weight * gw).sum()).backward();
  ((b.scores * gs).sum() + (b.expert_weight * gw).sum()).backward();
  EXPECT_CLOSE(l1.grad(), l2.grad(), 1e-5);
}

TEST_P(MoEOpsTest, ComposedExpertsMatchTokenLoopReference) {
  const auto [c, sigmoid, renorm] = GetParam();
  at::manual_seed(c.tokens * 7 + c.ffn);
  at::Tensor x = at::randn({c.tokens, c.hidden});
  at::Tensor w13 = at::randn({c.experts, c.hidden, 2 * c.ffn}) * 0.3;
  at::Tensor w2 = at::randn({c.experts, c.ffn, c.hidden}) * 0.3;
  at::Tensor logits = at::randn({c.tokens, c.experts});
  RouteResult r = ops::route(logits, RouteParams{c.top_k, sigmoid, renorm});
  at::Tensor weight = r.expert_weight.detach();

  auto leaf = [](const at::Tensor& t) { return t.clone().requires_grad_(true); };
  at::Tensor x1 = leaf(x), a1 = leaf(w13), b1 = leaf(w2), g1 = leaf(weight);
  at::Tensor x2 = leaf(x), a2 = leaf(w13), b2 = leaf(w2), g2 = leaf(weight);

  PermuteResult perm = ops::permute(x1, r.expert_index, c.experts);
  at::Tensor y = ops::expert_ffn(perm.permuted, a1, b1, perm.tokens_per_expert);
  at::Tensor out = ops::unpermute(y, g1, perm);
  at::Tensor ref = ops::reference::moe_experts(x2, r.expert_index, g2, a2, b2);
  EXPECT_CLOSE(out, ref, 1e-5);

  at::Tensor go = at::randn_like(out);
  (out * go).sum().backward();
  (ref * go).sum().backward();
  EXPECT_CLOSE(x1.grad(), x2.grad(), 1e-5);
  EXPECT_CLOSE(a1.grad(), a2.grad(), 1e-5);
  EXPECT_CLOSE(b1.grad(), b2.grad(), 1e-5);
  EXPECT_CLOSE(g1.grad(), g2.grad(), 1e-5);
}

// bf16 compute against the fp32 reference on the same (bf16-representable) inputs: values and
// gradients within 1e-2 relative. bf16 rounds every intermediate (h, a and their gradients) to 8
// bits of mantissa, so the bound is a statistical one: these shapes have rows of >= 32 elements.
class MoEOpsBf16Test : public MoEOpsTest {};

TEST_P(MoEOpsBf16Test, ExpertsMatchTheFp32ReferenceWithin1e2) {
  const auto [c, sigmoid, renorm] = GetParam();
  at::manual_seed(c.tokens * 13 + c.hidden);
  at::Tensor x = at::randn({c.tokens, c.hidden});
  at::Tensor w13 = at::randn({c.experts, c.hidden, 2 * c.ffn}) * 0.3;
  at::Tensor w2 = at::randn({c.experts, c.ffn, c.hidden}) * 0.3;
  RouteResult r =
      ops::route(at::randn({c.tokens, c.experts}), RouteParams{c.top_k, sigmoid, renorm});
  at::Tensor weight = r.expert_weight.detach();
  auto leaf = [](const at::Tensor& t, at::ScalarType dt) { return t.to(dt).requires_grad_(true); };
  at::Tensor xb = leaf(x, at::kBFloat16), ab = leaf(w13, at::kBFloat16),
             bb = leaf(w2, at::kBFloat16);
  at::Tensor xf = leaf(x, at::kFloat), af = leaf(w13, at::kFloat), bf = leaf(w2, at::kFloat);
  PermuteResult perm = ops::permute(xb, r.expert_index, c.experts);
  at::Tensor out =
      ops::unpermute(ops::expert_ffn(perm.permuted, ab, bb, perm.tokens_per_expert), weight, perm);
  at::Tensor ref = ops::reference::moe_experts(xf, r.expert_index, weight, af, bf);
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_CLOSE(out, ref, 1e-2);
  at::Tensor go = at::randn_like(ref);
  (out.to(at::kFloat) * go).sum().backward();
  (ref * go).sum().backward();
  EXPECT_CLOSE(xb.grad(), xf.grad(), 1e-2);
  EXPECT_CLOSE(ab.grad(), af.grad(), 1e-2);
  EXPECT_CLOSE(bb.grad(), bf.grad(), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoEOpsBf16Test,
    ::testing::Combine(::testing::Values(Case{37, 32, 8, 2, 24},   // ordinary
                                         Case{1, 32, 4, 2, 32},    // a single token
                                         Case{9, 32, 6, 6, 32},    // top_k == num_experts
                                         Case{5, 32, 16, 1, 32},   // most experts get nothing
                                         Case{64, 64, 4, 3, 32}),  // larger
                       ::testing::Bool(), ::testing::Bool()));

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoEOpsTest,
    ::testing::Combine(::testing::Values(Case{37, 16, 8, 2, 24},   // ordinary
                                         Case{1, 8, 4, 2, 8},      // a single token
                                         Case{9, 12, 6, 6, 10},    // top_k == num_experts
                                         Case{5, 8, 16, 1, 12},    // most experts get nothing
                                         Case{64, 32, 4, 3, 16}),  // larger
                       ::testing::Bool(), ::testing::Bool()));

// (bias, groups: 0 none, 1 scored by their best, 2 by the sum of their two best, sigmoid)
class RouteSelectionTest : public ::testing::TestWithParam<std::tuple<bool, int, bool>> {};

// Expert bias and group-limited routing change which experts are chosen, not how the weights
// are computed: the weights stay the unbiased scores of the chosen experts.
TEST_P(RouteSelectionTest, BiasAndGroupsMatchReference) {
  const auto [with_bias, with_groups, sigmoid] = GetParam();
  at::manual_seed(21);
  const int64_t n = 40, e = 16;
  RouteParams p{3, sigmoid, true};
  if (with_groups) {
    p.n_groups = 4;
    p.topk_groups = 2;
    p.group_members = with_groups;
  }
  if (with_bias) p.bias = at::randn({e}) * 0.2;
  at::Tensor logits = at::randn({n, e});
  at::Tensor l1 = logits.clone().requires_grad_(true), l2 = logits.clone().requires_grad_(true);
  RouteResult a = ops::route(l1, p), b = ops::reference::route(l2, p);
  EXPECT_TRUE(at::equal(a.expert_index, b.expert_index));
  EXPECT_TRUE(at::equal(a.tokens_per_expert, b.tokens_per_expert));
  EXPECT_CLOSE(a.expert_weight, b.expert_weight, 1e-6);
  at::Tensor unbiased = a.scores.detach().gather(1, a.expert_index);
  EXPECT_CLOSE(a.expert_weight, unbiased / unbiased.sum(-1, true), 1e-6);
  if (with_groups) {
    // Every token's experts lie in at most topk_groups groups.
    at::Tensor groups = at::div(a.expert_index, e / p.n_groups, "floor");
    for (int64_t t = 0; t < n; ++t)
      EXPECT_LE(std::get<0>(at::_unique(groups[t])).numel(), p.topk_groups);
  }
  at::Tensor gw = at::randn_like(a.expert_weight), gs = at::randn_like(a.scores);
  ((a.expert_weight * gw).sum() + (a.scores * gs).sum()).backward();
  ((b.expert_weight * gw).sum() + (b.scores * gs).sum()).backward();
  EXPECT_CLOSE(l1.grad(), l2.grad(), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Options, RouteSelectionTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(0, 1, 2),
                                            ::testing::Bool()));

TEST(RouteSelectionTest, ALargeBiasForcesAnExpertWithoutChangingWeights) {
  at::Tensor logits = at::randn({12, 6});
  RouteParams plain{2, false, true};
  RouteParams biased = plain;
  biased.bias = at::zeros({6});
  biased.bias[5] = 10.0f;  // expert 5 wins every selection
  RouteResult a = ops::route(logits, plain), b = ops::route(logits, biased);
  EXPECT_TRUE(at::equal(b.expert_index.select(1, 0), at::full({12}, 5, at::kLong)));
  EXPECT_EQ(b.tokens_per_expert[5].item<int64_t>(), 12);
  EXPECT_CLOSE(b.scores, a.scores, 0.0);
  at::Tensor raw = a.scores.gather(1, b.expert_index);
  EXPECT_CLOSE(b.expert_weight, raw / raw.sum(-1, true), 1e-6);
}

TEST(PermuteTest, GroupsRowsByExpertStablyAndCounts) {
  at::Tensor x = at::arange(12, at::kFloat).view({6, 2});
  // token t -> experts (idx[t][0], idx[t][1]); expert 3 receives nothing.
  at::Tensor idx = at::tensor({0, 2, 1, 0, 2, 1, 0, 1, 4, 2, 0, 4}, at::kLong).view({6, 2});
  PermuteResult p = ops::permute(x, idx, 5);
  EXPECT_TRUE(at::equal(p.tokens_per_expert, at::tensor({4, 3, 3, 0, 2}, at::kLong)));
  // Within an expert, rows keep token order (stable counting order).
  EXPECT_TRUE(at::equal(p.source_row, at::tensor({0, 1, 3, 5, 1, 2, 3, 0, 2, 4, 4, 5}, at::kLong)));
  EXPECT_TRUE(at::equal(p.permuted, x.index_select(0, p.source_row)));
  // Each routing slot appears exactly once, and row_of_slot inverts slot.
  EXPECT_TRUE(at::equal(std::get<0>(p.slot.sort()), at::arange(12, at::kLong)));
  EXPECT_TRUE(at::equal(p.row_of_slot.index_select(0, p.slot), at::arange(12, at::kLong)));
}

TEST(PermuteTest, AllTokensToOneExpert) {
  at::manual_seed(3);
  at::Tensor x = at::randn({10, 4}).requires_grad_(true);
  at::Tensor idx = at::full({10, 1}, 2, at::kLong);
  PermuteResult p = ops::permute(x, idx, 4);
  EXPECT_TRUE(at::equal(p.tokens_per_expert, at::tensor({0, 0, 10, 0}, at::kLong)));
  at::Tensor w13 = at::randn({4, 4, 6}).requires_grad_(true), w2 = at::randn({4, 3, 4});
  at::Tensor y = ops::expert_ffn(p.permuted, w13, w2, p.tokens_per_expert);
  EXPECT_CLOSE(y, ops::reference::swiglu_expert(x, w13[2], w2[2]), 1e-5);
  y.sum().backward();
  // Experts without tokens get exactly zero gradient.
  EXPECT_EQ(w13.grad()[0].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(w13.grad()[2].abs().sum().item<float>(), 0.0f);
}

TEST(UnpermuteTest, WeightsAndSumsEachTokensContributions) {
  at::Tensor x = at::ones({2, 3});
  at::Tensor idx = at::tensor({1, 0, 0, 1}, at::kLong).view({2, 2});
  at::Tensor w = at::tensor({0.25f, 0.75f, 0.5f, 0.5f}).view({2, 2});
  PermuteResult p = ops::permute(x, idx, 2);
  // Expert outputs: rows of expert 0 are 2s, of expert 1 are 4s.
  at::Tensor y = at::cat({at::full({2, 3}, 2.0f), at::full({2, 3}, 4.0f)});
  at::Tensor out = ops::unpermute(y, w, p);
  EXPECT_CLOSE(out,
               at::tensor({0.25f * 4 + 0.75f * 2, 0.5f * 2 + 0.5f * 4}).view({2, 1}).expand({2, 3}),
               1e-7);
}

TEST(MoEOpsTest, RejectsMismatchedShapes) {
  at::Tensor x = at::randn({4, 8});
  EXPECT_THROW(ops::route(at::randn({4}), RouteParams{1, false, true}), Error);
  EXPECT_THROW(ops::route(at::randn({4, 3}), RouteParams{4, false, true}), Error);
  EXPECT_THROW(ops::route(at::randn({4, 6}), RouteParams{1, false, true, 4, 1}), Error);  // 4 ∤ 6
  EXPECT_THROW(ops::route(at::randn({4, 8}), RouteParams{3, false, true, 4, 1}), Error);  // 3 > 2
  EXPECT_THROW(ops::permute(x, at::zeros({3, 2}, at::kLong), 4), Error);
  // No expert per token: the backward would divide by k = 0.
  EXPECT_THROW(ops::permute(x, at::zeros({4, 0}, at::kLong), 4), Error);
  // Expert ids outside the table are a hetmoe::Error naming the range, on every CPU table.
  for (const int64_t bad : {int64_t{4}, int64_t{-1}}) {
    at::Tensor index = at::zeros({4, 2}, at::kLong);
    index[2][1] = bad;
    for (ops::KernelImpl impl :
         {ops::KernelImpl::Native, ops::KernelImpl::Portable, ops::KernelImpl::Reference}) {
      ops::KernelImplGuard guard(impl);
      const std::string e = test_support::error_of([&] { ops::permute(x, index, 4); });
      EXPECT_NE(e.find("[permute] expert indices must be in [0, 4), got"), std::string::npos)
          << ops::to_string(impl) << ", expert " << bad << ": " << e;
    }
  }
  EXPECT_THROW(ops::expert_ffn(x, at::randn({2, 8, 6}), at::randn({2, 4, 8}), at::tensor({2, 2})),
               Error);
  // Counts that do not split x's 4 rows: fewer (rows left without an expert), more, negative.
  const at::Tensor w13 = at::randn({2, 8, 8}), w2 = at::randn({2, 4, 8});
  EXPECT_EQ(ops::expert_ffn(x, w13, w2, at::tensor({1, 3})).sizes(), x.sizes());
  for (const auto& counts : {at::tensor({1, 2}), at::tensor({3, 2}), at::tensor({5, -1})}) {
    const std::string e = test_support::error_of([&] { ops::expert_ffn(x, w13, w2, counts); });
    EXPECT_NE(e.find("[expert_ffn] tokens_per_expert (sum "), std::string::npos)
        << counts << ": " << e;
  }
}

TEST(SwigluTest, MatchesSiluTimesUpInValuesAndGradients) {
  at::manual_seed(8);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    at::Tensor base = at::randn({3, 5, 12}).to(dtype);
    at::Tensor h1 = base.detach().requires_grad_(true);
    at::Tensor h2 = base.detach().to(at::kFloat).requires_grad_(true);
    at::Tensor a = ops::swiglu(h1);
    at::Tensor b = at::silu(h2.narrow(-1, 0, 6)) * h2.narrow(-1, 6, 6);
    ASSERT_EQ(a.sizes(), b.sizes());
    EXPECT_EQ(a.scalar_type(), dtype);
    const double tol = dtype == at::kFloat ? 1e-6 : 1e-2;
    EXPECT_CLOSE(a.to(at::kFloat), b, tol);
    at::Tensor g = at::randn_like(b);
    (a.to(at::kFloat) * g).sum().backward();
    (b * g).sum().backward();
    EXPECT_CLOSE(h1.grad().to(at::kFloat), h2.grad(), tol);
  }
  EXPECT_THROW(ops::swiglu(at::randn({4, 7})), Error);
}

// RoPE tables for positions 0..t-1 and head dim d, as AttentionImpl builds them.
std::pair<at::Tensor, at::Tensor> rope_tables(int64_t t, int64_t d, at::ScalarType dtype) {
  at::Tensor inv = at::pow(10000.0, -at::arange(0, d / 2, at::kDouble) * 2.0 / d);
  at::Tensor angles = at::outer(at::arange(0, t, at::kDouble), inv);
  return {angles.cos().to(dtype), angles.sin().to(dtype)};
}

TEST(RotaryEmbeddingTest, MatchesTheCompositeFormulaInValuesAndGradients) {
  at::manual_seed(5);
  // [B, T, H, d] seen as [B, H, T, d], as the attention's projections are: not contiguous.
  at::Tensor base = at::randn({2, 7, 3, 16}).transpose(1, 2);
  auto [cos, sin] = rope_tables(7, 16, at::kFloat);
  at::Tensor x1 = base.detach().requires_grad_(true), x2 = base.detach().requires_grad_(true);
  at::Tensor a = ops::rotary_embedding(x1, cos, sin);
  at::Tensor b = ops::reference::rotary_embedding(x2, cos, sin);
  EXPECT_TRUE(a.is_contiguous());
  EXPECT_CLOSE(a, b, 1e-6);
  at::Tensor g = at::randn_like(b);
  (a * g).sum().backward();
  (b * g).sum().backward();
  EXPECT_CLOSE(x1.grad(), x2.grad(), 1e-6);
  // A rotation keeps each pair's length.
  auto pair_norms = [](const at::Tensor& z) {
    return z.narrow(-1, 0, 8).pow(2) + z.narrow(-1, 8, 8).pow(2);
  };
  EXPECT_CLOSE(pair_norms(a.detach()), pair_norms(base), 1e-5);
}

TEST(RotaryEmbeddingTest, Bf16StaysWithin1e2OfFp32) {
  at::manual_seed(6);
  at::Tensor x = at::randn({1, 4, 9, 32});
  auto [cos, sin] = rope_tables(9, 32, at::kFloat);
  auto [cos16, sin16] = rope_tables(9, 32, at::kBFloat16);
  at::Tensor xb = x.to(at::kBFloat16).requires_grad_(true);
  at::Tensor xf = x.to(at::kBFloat16).to(at::kFloat).requires_grad_(true);
  at::Tensor a = ops::rotary_embedding(xb, cos16, sin16);
  at::Tensor b = ops::reference::rotary_embedding(xf, cos, sin);
  EXPECT_EQ(a.scalar_type(), at::kBFloat16);
  EXPECT_CLOSE(a.to(at::kFloat), b, 1e-2);
  at::Tensor g = at::randn_like(b);
  (a.to(at::kFloat) * g).sum().backward();
  (b * g).sum().backward();
  EXPECT_CLOSE(xb.grad().to(at::kFloat), xf.grad(), 1e-2);
}

TEST(RotaryEmbeddingTest, PassesGradcheckInDouble) {
  at::manual_seed(7);
  at::Tensor x = at::randn({2, 5, 6}, at::kDouble).requires_grad_(true);
  auto [cos, sin] = rope_tables(5, 6, at::kDouble);
  at::Tensor y = ops::rotary_embedding(x, cos, sin);
  at::Tensor g = at::randn_like(y);
  (y * g).sum().backward();
  at::Tensor analytic = x.grad();
  at::Tensor numeric = at::zeros_like(x);
  auto flat = x.detach().view(-1);
  auto num = numeric.view(-1);
  const double h = 1e-6;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double keep = flat[i].item<double>();
    flat[i] = keep + h;
    const double up = (ops::rotary_embedding(x.detach(), cos, sin) * g).sum().item<double>();
    flat[i] = keep - h;
    const double down = (ops::rotary_embedding(x.detach(), cos, sin) * g).sum().item<double>();
    flat[i] = keep;
    num[i] = (up - down) / (2 * h);
  }
  EXPECT_CLOSE(analytic, numeric, 1e-7);
}

TEST(RotaryEmbeddingTest, RejectsTablesThatDoNotFit) {
  at::Tensor x = at::randn({1, 2, 5, 8});
  auto [cos, sin] = rope_tables(5, 8, at::kFloat);
  EXPECT_THROW(ops::rotary_embedding(x, cos.narrow(0, 0, 4), sin.narrow(0, 0, 4)), Error);
  EXPECT_THROW(ops::rotary_embedding(at::randn({1, 2, 5, 7}), cos, sin), Error);
  EXPECT_THROW(ops::rotary_embedding(x, cos.to(at::kDouble), sin.to(at::kDouble)), Error);
}

}  // namespace
}  // namespace hetmoe
