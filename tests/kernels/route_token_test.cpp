// The router's per-token math (kernels/common/route_token.h), which the CPU kernels and the GPU
// kernels both run: group-limited selection, the bias's effect, tie order, NaN inputs, and the
// backward against finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "kernels/common/route_token.h"

namespace hetmoe {
namespace {

struct Routed {
  std::vector<float> scores, weight;
  std::vector<int64_t> index;
};

Routed route(const std::vector<float>& logits, const float* bias, int k, int n_groups,
             int topk_groups, bool sigmoid, bool renormalize, int group_members = 1) {
  const int e = static_cast<int>(logits.size());
  Routed r{std::vector<float>(e), std::vector<float>(k), std::vector<int64_t>(k)};
  router::route_token(logits.data(), bias, e, k, n_groups, topk_groups, group_members, sigmoid,
                      renormalize, r.scores.data(), r.index.data(), r.weight.data());
  return r;
}

// Sigmoid is monotone, so experts rank as their logits do. Groups of two:
// g0 {0, 3} best 3, g1 {2.5, 2.4} best 2.5, g2 {2.9, -1} best 2.9, g3 {1, 1} best 1.
const std::vector<float> kLogits = {0, 3, 2.5f, 2.4f, 2.9f, -1, 1, 1};

TEST(RouteTokenTest, GroupLimitedSelectionPicksFromTheBestGroupsOnly) {
  // Groups 0 and 2 win; their experts in order: 1 (3), 4 (2.9), 0 (0), 5 (-1).
  Routed g = route(kLogits, nullptr, 3, 4, 2, true, false);
  EXPECT_EQ(g.index, (std::vector<int64_t>{1, 4, 0}));
  // Without groups the third choice is expert 2 (2.5).
  Routed all = route(kLogits, nullptr, 3, 1, 1, true, false);
  EXPECT_EQ(all.index, (std::vector<int64_t>{1, 4, 2}));
  for (int j = 0; j < 3; ++j) EXPECT_EQ(g.weight[j], g.scores[g.index[j]]);
}

// DeepSeek-V3's group score, the sum of a group's two best: g0 0.50 + 0.95, g1 0.92 + 0.92,
// g2 0.95 + 0.27, g3 0.73 + 0.73 (sigmoids of the logits). Groups 1 and 3 win (by the best
// member alone, 0 and 2 do), so the experts are 2 (2.5), 3 (2.4) and 6 (1; tied with 7).
TEST(RouteTokenTest, GroupsScoredByTheirTwoBestMembers) {
  Routed g = route(kLogits, nullptr, 3, 4, 2, true, false, /*group_members=*/2);
  EXPECT_EQ(g.index, (std::vector<int64_t>{2, 3, 6}));
}

TEST(RouteTokenTest, BiasChoosesButWeightsStayUnbiasedAndRenormalised) {
  std::vector<float> bias(8, 0.0f);
  bias[6] = 10.0f;  // lifts group 3 and expert 6 to the top
  Routed r = route(kLogits, bias.data(), 2, 4, 2, true, true);
  EXPECT_EQ(r.index, (std::vector<int64_t>{6, 1}));
  const float total = r.scores[6] + r.scores[1];
  EXPECT_FLOAT_EQ(r.weight[0], r.scores[6] / total);
  EXPECT_FLOAT_EQ(r.weight[1], r.scores[1] / total);
}

TEST(RouteTokenTest, SoftmaxScoresSumToOneAndTiesGoToTheLowerExpert) {
  Routed r = route(std::vector<float>(6, 0.5f), nullptr, 4, 1, 1, false, false);
  EXPECT_EQ(r.index, (std::vector<int64_t>{0, 1, 2, 3}));
  float sum = 0;
  for (float s : r.scores) sum += s;
  EXPECT_NEAR(sum, 1.0f, 1e-6);
}

TEST(RouteTokenTest, NanInputsStillChooseDistinctExpertsInRange) {
  const float nan = std::nanf("");
  // Sigmoid: the NaN experts rank last, the others are chosen as usual.
  std::vector<float> some = kLogits;
  some[1] = some[4] = nan;
  Routed s = route(some, nullptr, 3, 1, 1, true, false);
  EXPECT_EQ(s.index, (std::vector<int64_t>{2, 3, 6}));
  // Softmax over a NaN is NaN everywhere: every choice ties, so the lowest ids win, inside the
  // groups that also tie to the lowest ids.
  Routed all = route(some, nullptr, 3, 4, 2, false, true);
  EXPECT_EQ(all.index, (std::vector<int64_t>{0, 1, 2}));
  std::vector<float> bias(8, nan);
  Routed b = route(kLogits, bias.data(), 2, 1, 1, true, false);
  EXPECT_EQ(b.index, (std::vector<int64_t>{0, 1}));
}

// A group with a +inf and a -inf member scores NaN (their sum): it ranks last, like a NaN
// choice, instead of leaving no group chosen and an expert index of -1.
TEST(RouteTokenTest, GroupOfOppositeInfiniteBiasesRanksLast) {
  const float inf = INFINITY;
  const std::vector<float> logits = {0, 0, 0, 0};
  const std::vector<float> bias = {inf, -inf, 0, 0};  // groups {0, 1} and {2, 3}
  Routed r = route(logits, bias.data(), 3, 2, 2, true, true, 2);
  // Both groups are allowed (topk_groups 2); expert 0 (+inf) first, then 2, 3 (0), then 1 (-inf).
  EXPECT_EQ(r.index, (std::vector<int64_t>{0, 2, 3}));
  for (float w : r.weight) EXPECT_TRUE(std::isfinite(w));
  // One group allowed: the finite group wins over the NaN-scored one.
  Routed one = route(logits, bias.data(), 2, 2, 1, true, true, 2);
  EXPECT_EQ(one.index, (std::vector<int64_t>{2, 3}));
}

// d(sum_j gw_j * w_j + sum_i gs_i * s_i)/dlogits against central differences.
TEST(RouteTokenTest, BackwardMatchesFiniteDifferences) {
  const std::vector<float> logits = {0.3f, -0.2f, 0.9f, 0.1f, -0.7f, 0.5f};
  const std::vector<float> gs = {0.2f, -0.1f, 0.4f, 0.3f, -0.5f, 0.1f};
  const std::vector<float> gw = {1.0f, -2.0f, 0.5f};
  const int e = 6, k = 3;
  for (const bool sigmoid : {false, true}) {
    for (const bool renorm : {false, true}) {
      Routed r = route(logits, nullptr, k, 1, 1, sigmoid, renorm);
      std::vector<float> grad(e), scratch(k);
      router::route_token_backward(gs.data(), gw.data(), r.scores.data(), r.index.data(), e, k,
                                   sigmoid, renorm, scratch.data(), grad.data());
      auto objective = [&](const std::vector<float>& l) {
        Routed q = route(l, nullptr, k, 1, 1, sigmoid, renorm);
        EXPECT_EQ(q.index, r.index);  // the step must not change the selection
        double f = 0;
        for (int j = 0; j < k; ++j) f += gw[j] * q.weight[j];
        for (int i = 0; i < e; ++i) f += gs[i] * q.scores[i];
        return f;
      };
      for (int i = 0; i < e; ++i) {
        std::vector<float> up = logits, down = logits;
        up[i] += 1e-2f;
        down[i] -= 1e-2f;
        const double numeric = (objective(up) - objective(down)) / 2e-2;
        EXPECT_NEAR(grad[i], numeric, 2e-3)
            << "sigmoid " << sigmoid << " renorm " << renorm << " logit " << i;
      }
    }
  }
}

}  // namespace
}  // namespace hetmoe
