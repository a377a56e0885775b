// Naive, obviously-correct versions of the MoE operators (see hetmoe/ops/reference.h).
#include "hetmoe/ops/reference.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace hetmoe::ops::reference {

RouteResult route(const at::Tensor& logits, const RouteParams& p) {
  RouteResult r;
  at::Tensor l = logits.to(at::kFloat);
  r.scores = p.sigmoid ? at::sigmoid(l) : at::softmax(l, -1);
  const int64_t n = l.size(0), e = l.size(1);
  std::vector<at::Tensor> weights, indices;
  at::Tensor counts = at::zeros({e}, at::kLong);
  const int64_t per_group = e / p.n_groups;
  for (int64_t t = 0; t < n; ++t) {
    // Selection by a full descending sort of this token's (biased) scores, keeping the experts
    // of the token's best groups only.
    at::Tensor choice = r.scores[t].detach().clone();
    if (p.bias.defined()) choice += p.bias.to(choice.device());
    choice.masked_fill_(choice.isnan(), -INFINITY);  // NaN ranks last
    std::vector<bool> allowed(static_cast<size_t>(p.n_groups), true);
    if (p.n_groups > 1) {
      std::vector<std::pair<float, int64_t>> groups;
      for (int64_t g = 0; g < p.n_groups; ++g) {
        // The group's score: the sum of its group_members best choices, best first.
        at::Tensor best = std::get<0>(choice.narrow(0, g * per_group, per_group)
                                          .sort(/*stable=*/true, 0, /*descending=*/true));
        float score = 0.0f;
        for (int64_t m = 0; m < p.group_members; ++m) score += best[m].item<float>();
        if (std::isnan(score)) score = -INFINITY;  // +inf and -inf members: ranks last
        groups.emplace_back(-score, g);
      }
      std::sort(groups.begin(), groups.end());
      for (size_t g = 0; g < groups.size(); ++g)
        allowed[groups[g].second] = g < static_cast<size_t>(p.topk_groups);
    }
    // Stable: equal scores go to the lower expert id, as on every backend.
    at::Tensor order = std::get<1>(choice.sort(/*stable=*/true, 0, /*descending=*/true));
    std::vector<int64_t> kept;
    for (int64_t i = 0; i < e && static_cast<int64_t>(kept.size()) < p.top_k; ++i) {
      const int64_t expert = order[i].item<int64_t>();
      if (allowed[expert / per_group]) kept.push_back(expert);
    }
    at::Tensor sel = at::tensor(kept, at::kLong);
    at::Tensor w = r.scores[t].index_select(0, sel);
    if (p.renormalize) w = w / (w.sum() + 1e-20);  // route_token.h's kRenormEps
    weights.push_back(w);
    indices.push_back(sel);
    for (int64_t j = 0; j < p.top_k; ++j) counts[sel[j].item<int64_t>()] += 1;
  }
  r.expert_weight = at::stack(weights);
  r.expert_index = at::stack(indices);
  r.tokens_per_expert = counts.to(logits.device());
  return r;
}

at::Tensor swiglu_expert(const at::Tensor& x, const at::Tensor& w13_e, const at::Tensor& w2_e) {
  const int64_t f = w2_e.size(0);
  at::Tensor h = at::matmul(x, w13_e);
  return at::matmul(at::silu(h.narrow(-1, 0, f)) * h.narrow(-1, f, f), w2_e);
}

at::Tensor moe_experts(const at::Tensor& x, const at::Tensor& expert_index,
                       const at::Tensor& expert_weight, const at::Tensor& w13,
                       const at::Tensor& w2) {
  std::vector<at::Tensor> rows;
  for (int64_t t = 0; t < x.size(0); ++t) {
    at::Tensor acc = at::zeros({x.size(1)}, x.options());
    for (int64_t j = 0; j < expert_index.size(1); ++j) {
      const int64_t e = expert_index[t][j].item<int64_t>();
      acc = acc + expert_weight[t][j].to(x.scalar_type()) * swiglu_expert(x[t], w13[e], w2[e]);
    }
    rows.push_back(acc);
  }
  return at::stack(rows);
}

at::Tensor capacity_keep(const at::Tensor& expert_index, const at::Tensor& priority,
                         int64_t num_experts, int64_t capacity) {
  at::Tensor idx = expert_index.reshape(-1).to(at::kCPU, at::kLong).contiguous();
  at::Tensor pr = priority.reshape(-1).to(at::kCPU, at::kFloat).contiguous();
  at::Tensor keep = at::zeros({idx.numel()}, at::kBool);
  for (int64_t e = 0; e < num_experts; ++e) {
    std::vector<std::pair<float, int64_t>> mine;
    for (int64_t s = 0; s < idx.numel(); ++s)
      if (idx[s].item<int64_t>() == e) mine.emplace_back(pr[s].item<float>(), s);
    std::sort(mine.begin(), mine.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (size_t i = 0; i < mine.size() && static_cast<int64_t>(i) < capacity; ++i)
      keep[mine[i].second] = true;
  }
  return keep;
}

at::Tensor rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

}  // namespace hetmoe::ops::reference
