// Portable MoE kernels written with plain ATen calls. They run on any device ATen supports and
// are the baseline every specialised kernel (kernels/cpu, kernels/gpu) is checked against.
#include <ATen/ATen.h>

#include <vector>

#include "hetmoe/device/kernels.h"
#include "kernels/common/route_token.h"

namespace hetmoe {

at::Tensor capacity_keep_mask(const at::Tensor& expert_index, const at::Tensor& priority,
                              int64_t num_experts, int64_t capacity) {
  at::Tensor flat = expert_index.reshape(-1);
  const int64_t slots = flat.numel();
  TORCH_CHECK(priority.defined() && priority.numel() == slots,
              "a capacity needs a priority per routing slot");
  // Slots ordered by expert, then priority (highest first), then slot: two stable sorts.
  at::Tensor by_priority = std::get<1>(at::sort(priority.reshape(-1).to(at::kFloat),
                                                /*stable=*/true, 0, /*descending=*/true));
  at::Tensor by_expert = std::get<1>(
      at::sort(flat.index_select(0, by_priority), /*stable=*/true, 0, /*descending=*/false));
  at::Tensor order = by_priority.index_select(0, by_expert);
  at::Tensor counts = at::bincount(flat, {}, num_experts);
  at::Tensor starts = counts.cumsum(0) - counts;
  at::Tensor rank =
      at::arange(slots, flat.options()) - starts.index_select(0, flat.index_select(0, order));
  return at::zeros({slots}, flat.options().dtype(at::kBool)).index_put_({order}, rank < capacity);
}

namespace {

// The k best of each row, best first, ties to the lower index (as route_token.h chooses; topk
// leaves the order of equal values unspecified).
at::Tensor best_first(const at::Tensor& values, int64_t k) {
  return std::get<1>(values.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true))
      .narrow(-1, 0, k);
}

RouteResult route_forward(const at::Tensor& logits, const RouteParams& p) {
  RouteResult r;
  r.scores = p.sigmoid ? logits.sigmoid() : logits.softmax(-1);
  at::Tensor choice = p.bias.defined() ? r.scores + p.bias : r.scores;
  choice = choice.masked_fill(choice.isnan(), -INFINITY);  // NaN ranks last, as on every backend
  if (p.n_groups > 1) {
    const int64_t n = logits.size(0), per_group = logits.size(1) / p.n_groups;
    // A group's score: the sum of its group_members best choices, best first (as route_token.h).
    at::Tensor group_score =
        std::get<0>(choice.view({n, p.n_groups, per_group}).topk(p.group_members, -1)).sum(-1);
    at::Tensor best_groups = best_first(group_score, p.topk_groups);
    at::Tensor allowed = at::zeros({n, p.n_groups}, logits.options().dtype(at::kBool))
                             .scatter_(1, best_groups, true)
                             .unsqueeze(-1)
                             .expand({n, p.n_groups, per_group})
                             .reshape({n, -1});
    // Experts of the chosen groups first, each part best first: a chosen group's NaN member
    // (-inf) still ranks above every expert of the other groups, as in route_token.h.
    at::Tensor order = std::get<1>(choice.sort(/*stable=*/true, -1, /*descending=*/true));
    at::Tensor chosen_first = std::get<1>(
        allowed.gather(1, order).to(at::kInt).sort(/*stable=*/true, -1, /*descending=*/true));
    r.expert_index = order.gather(1, chosen_first).narrow(-1, 0, p.top_k).contiguous();
  } else {
    r.expert_index = best_first(choice, p.top_k);
  }
  at::Tensor values = r.scores.gather(1, r.expert_index);
  r.expert_weight =
      p.renormalize ? values / (values.sum(-1, /*keepdim=*/true) + router::kRenormEps) : values;
  r.tokens_per_expert = at::bincount(r.expert_index.reshape(-1), {}, logits.size(1));
  return r;
}

at::Tensor route_backward(const at::Tensor& grad_scores, const at::Tensor& grad_weight,
                          const at::Tensor& scores, const at::Tensor& expert_index,
                          const RouteParams& p) {
  at::Tensor g = grad_scores.defined() ? grad_scores.clone() : at::zeros_like(scores);
  if (grad_weight.defined()) {
    at::Tensor grad_selected = grad_weight;
    if (p.renormalize) {
      // w = s / S with S = sum(s): dL/ds_j = (g_j - sum_i g_i w_i) / S.
      at::Tensor selected = scores.gather(1, expert_index);
      at::Tensor sum = selected.sum(-1, true) + router::kRenormEps;
      at::Tensor w = selected / sum;
      grad_selected = (grad_weight - (grad_weight * w).sum(-1, true)) / sum;
    }
    g.scatter_add_(1, expert_index, grad_selected);
  }
  if (p.sigmoid) return g * scores * (1 - scores);
  return scores * (g - (g * scores).sum(-1, true));
}

PermuteResult permute_forward(const at::Tensor& x, const at::Tensor& expert_index,
                              int64_t num_experts, const PermuteOptions& options) {
  const int64_t k = expert_index.size(1);
  at::Tensor flat = expert_index.reshape(-1);
  const int64_t slots = flat.numel();
  PermuteResult r;
  r.slot = std::get<1>(at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  if (options.capacity >= 0) {
    at::Tensor keep =
        capacity_keep_mask(expert_index, options.priority, num_experts, options.capacity);
    r.slot = r.slot.masked_select(keep.index_select(0, r.slot));
  }
  r.source_row = at::div(r.slot, k, "floor");
  r.row_of_slot = at::full({slots}, -1, r.slot.options())
                      .index_copy_(0, r.slot, at::arange(r.slot.numel(), r.slot.options()));
  r.permuted = x.index_select(0, r.source_row);
  r.tokens_per_expert = at::bincount(flat.index_select(0, r.slot), {}, num_experts);
  r.dropped = at::scalar_tensor(slots - r.slot.numel(), r.slot.options());
  return r;
}

// Rows of y for each slot, with a zero row for dropped slots (row_of_slot -1): [N*k, H].
at::Tensor rows_of_slots(const at::Tensor& y, const at::Tensor& row_of_slot) {
  if (y.size(0) == row_of_slot.numel()) return y.index_select(0, row_of_slot);  // dropless
  at::Tensor padded = at::cat({y, at::zeros({1, y.size(1)}, y.options())});
  at::Tensor rows = at::where(row_of_slot < 0, y.size(0), row_of_slot);
  return padded.index_select(0, rows);
}

at::Tensor permute_backward(const at::Tensor& grad_permuted, const at::Tensor& row_of_slot,
                            int64_t top_k) {
  const int64_t n = row_of_slot.numel() / top_k;
  return rows_of_slots(grad_permuted, row_of_slot).view({n, top_k, -1}).sum(1);
}

// LibTorch's GEMM in the MatmulFn shape.
void aten_matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  at::Tensor o = out;  // mm_out and addmm_ want an lvalue
  if (accumulate)
    o.addmm_(a, b);
  else
    at::mm_out(o, a, b);
}

std::vector<int64_t> host_counts(const at::Tensor& tokens_per_expert) {
  at::Tensor c = tokens_per_expert.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

// Two vectorised passes and no temporaries.
at::Tensor swiglu_activation(const at::Tensor& h) {
  const int64_t f = h.size(-1) / 2;
  std::vector<int64_t> shape(h.sizes().begin(), h.sizes().end());
  shape.back() = f;
  at::Tensor a = at::empty(shape, h.options());
  at::silu_out(a, h.narrow(-1, 0, f));
  return a.mul_(h.narrow(-1, f, f));
}

// grad_h = [grad_a * up * silu'(gate) | grad_a * silu(gate)], written into one buffer through
// ATen's fused silu_backward (4 vectorised passes instead of a chain of temporaries).
at::Tensor swiglu_activation_backward(const at::Tensor& grad_a, const at::Tensor& h) {
  const int64_t f = h.size(-1) / 2;
  at::Tensor gate = h.narrow(-1, 0, f), up = h.narrow(-1, f, f);
  at::Tensor grad_h = at::empty(h.sizes(), h.options());
  at::Tensor grad_gate = grad_h.narrow(-1, 0, f), grad_up = grad_h.narrow(-1, f, f);
  at::mul_out(grad_up, grad_a, up);
  at::silu_backward_out(grad_gate, grad_up, gate);
  at::silu_out(grad_up, gate);
  grad_up.mul_(grad_a);
  return grad_h;
}

at::Tensor grouped_swiglu_forward(MatmulFn mm, const at::Tensor& x, const at::Tensor& w13,
                                  const at::Tensor& w2, const at::Tensor& tokens_per_expert,
                                  at::Tensor* h_out) {
  const int64_t m = x.size(0), hidden = x.size(1), f2 = w13.size(2);
  const auto counts = host_counts(tokens_per_expert);
  at::Tensor h = at::empty({m, f2}, x.options());
  at::Tensor y = at::empty({m, hidden}, x.options());
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] == 0) continue;
    mm(h.narrow(0, offset, counts[e]), x.narrow(0, offset, counts[e]), w13[e], false);
    offset += counts[e];
  }
  at::Tensor a = swiglu_activation(h);
  offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] == 0) continue;
    mm(y.narrow(0, offset, counts[e]), a.narrow(0, offset, counts[e]), w2[e], false);
    offset += counts[e];
  }
  if (h_out) *h_out = h;
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_swiglu_backward(
    MatmulFn mm, const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h,
    const at::Tensor& w13, const at::Tensor& w2, const at::Tensor& tokens_per_expert) {
  const auto counts = host_counts(tokens_per_expert);
  at::Tensor a = swiglu_activation(h);

  at::Tensor grad_w2 = at::zeros_like(w2);
  at::Tensor grad_w13 = at::zeros_like(w13);
  at::Tensor grad_a = at::empty_like(a);
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] == 0) continue;
    at::Tensor gy = grad_y.narrow(0, offset, counts[e]);
    mm(grad_w2[e], a.narrow(0, offset, counts[e]).t(), gy, false);
    mm(grad_a.narrow(0, offset, counts[e]), gy, w2[e].t(), false);
    offset += counts[e];
  }
  at::Tensor grad_h = swiglu_activation_backward(grad_a, h);
  at::Tensor grad_x = at::empty_like(x);
  offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] == 0) continue;
    at::Tensor gh = grad_h.narrow(0, offset, counts[e]);
    mm(grad_w13[e], x.narrow(0, offset, counts[e]).t(), gh, false);
    mm(grad_x.narrow(0, offset, counts[e]), gh, w13[e].t(), false);
    offset += counts[e];
  }
  return {grad_x, grad_w13, grad_w2};
}

namespace {

at::Tensor expert_ffn_forward(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                              const at::Tensor& tokens_per_expert, at::Tensor* h_out) {
  return grouped_swiglu_forward(aten_matmul, x, w13, w2, tokens_per_expert, h_out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> expert_ffn_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w13,
    const at::Tensor& w2, const at::Tensor& tokens_per_expert) {
  return grouped_swiglu_backward(aten_matmul, grad_y, x, h, w13, w2, tokens_per_expert);
}

at::Tensor unpermute_forward(const at::Tensor& y, const at::Tensor& weight,
                             const at::Tensor& row_of_slot) {
  const int64_t n = weight.size(0), k = weight.size(1);
  at::Tensor rows = rows_of_slots(y, row_of_slot).view({n, k, y.size(1)});
  // [N, 1, k] x [N, k, H]: the k-way weighted sum with fp32 weights and accumulation (as the GPU
  // kernel does), whatever the compute dtype.
  const at::ScalarType acc = at::promote_types(y.scalar_type(), at::kFloat);
  return at::bmm(weight.to(acc).unsqueeze(1), rows.to(acc)).squeeze(1).to(y.scalar_type());
}

std::pair<at::Tensor, at::Tensor> unpermute_backward(const at::Tensor& grad_out,
                                                     const at::Tensor& y, const at::Tensor& weight,
                                                     const at::Tensor& row_of_slot,
                                                     const at::Tensor& slot) {
  const int64_t n = weight.size(0), k = weight.size(1), h = y.size(1);
  const at::ScalarType acc = at::promote_types(y.scalar_type(), at::kFloat);
  at::Tensor grad_slots = weight.to(acc).unsqueeze(-1) * grad_out.to(acc).unsqueeze(1);
  at::Tensor grad_y = grad_slots.view({n * k, h}).index_select(0, slot).to(y.scalar_type());
  at::Tensor rows = rows_of_slots(y, row_of_slot).view({n, k, h}).to(acc);
  at::Tensor grad_w = at::bmm(rows, grad_out.to(acc).unsqueeze(-1)).squeeze(-1);
  return {grad_y, grad_w.to(weight.scalar_type())};
}

}  // namespace

const MoEKernels& aten_moe_kernels() {
  static const MoEKernels table{route_forward,      route_backward,
                                permute_forward,    permute_backward,
                                expert_ffn_forward, expert_ffn_backward,
                                unpermute_forward,  unpermute_backward,
                                /*matmul=*/nullptr, "aten"};
  return table;
}

}  // namespace hetmoe
