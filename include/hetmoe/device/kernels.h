// The MoE kernel table a backend fills in: the forward and backward kernels behind the four MoE
// operators (route, permute, expert SwiGLU FFN, unpermute). The autograd operators in hetmoe/ops
// call only these entries, so a backend changes how they run without touching the model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace hetmoe {

// What is fixed for one routing call.
struct RouteParams {
  int64_t top_k = 2;
  bool sigmoid = false;     // false: softmax scores; true: sigmoid scores
  bool renormalize = true;  // top-k weights divided by their sum
  // Group-limited routing: the experts form n_groups contiguous groups, a group's score is the
  // best (biased) score in it, and a token chooses its experts only in its topk_groups best
  // groups. n_groups == 1 disables it.
  int64_t n_groups = 1;
  int64_t topk_groups = 1;
  // [E] fp32 or undefined: added to the scores to choose the experts (aux-loss-free balancing)
  // but not to the routing weights, which stay the unbiased scores of the chosen experts.
  at::Tensor bias;
};

struct RouteResult {
  at::Tensor scores;             // [N, E] fp32 softmax/sigmoid of the logits
  at::Tensor expert_index;       // [N, k] int64 selected experts, best first
  at::Tensor expert_weight;      // [N, k] fp32 routing weights (renormalised when asked)
  at::Tensor tokens_per_expert;  // [E] int64 number of (token, slot) pairs routed to each expert
};

// Row map of a permutation into expert-contiguous order. Routing slot s = token * k + j is the
// j-th expert choice of a token; permuted row i holds one slot.
struct PermuteResult {
  at::Tensor permuted;           // [N*k, H] rows of x in expert order (stable within an expert)
  at::Tensor source_row;         // [N*k] int64: permuted row i came from token source_row[i]
  at::Tensor slot;               // [N*k] int64: permuted row i holds routing slot slot[i]
  at::Tensor row_of_slot;        // [N*k] int64: the inverse map, slot s sits in row row_of_slot[s]
  at::Tensor tokens_per_expert;  // [E] int64
};

struct MoEKernels {
  // logits [N, E] fp32 -> scores, selection and weights.
  RouteResult (*route_forward)(const at::Tensor& logits, const RouteParams& p) = nullptr;
  // Gradient of the logits given gradients of scores ([N,E] or undefined) and of expert_weight.
  at::Tensor (*route_backward)(const at::Tensor& grad_scores, const at::Tensor& grad_weight,
                               const at::Tensor& scores, const at::Tensor& expert_index,
                               const RouteParams& p) = nullptr;

  // x [N, H], expert_index [N, k] -> rows grouped by expert.
  PermuteResult (*permute_forward)(const at::Tensor& x, const at::Tensor& expert_index,
                                   int64_t num_experts) = nullptr;
  // grad_permuted [N*k, H] -> grad_x [N, H]: the sum of a token's k rows (a gather, so the
  // result does not depend on the order of floating-point additions across threads).
  at::Tensor (*permute_backward)(const at::Tensor& grad_permuted, const at::Tensor& row_of_slot,
                                 int64_t top_k) = nullptr;

  // Grouped SwiGLU FFN over expert-contiguous rows: for expert e's slice X_e,
  // h = X_e @ w13[e] ([H, 2F]: gate then up), a = silu(h_gate) * h_up, y = a @ w2[e] ([F, H]).
  // Returns y [M, H]; stores h [M, 2F] in *h_out for the backward.
  at::Tensor (*expert_ffn_forward)(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                                   const at::Tensor& tokens_per_expert,
                                   at::Tensor* h_out) = nullptr;
  // Returns {grad_x, grad_w13, grad_w2}.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> (*expert_ffn_backward)(
      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w13,
      const at::Tensor& w2, const at::Tensor& tokens_per_expert) = nullptr;

  // y [N*k, H] in expert order, weight [N, k] -> out [N, H]:
  // out[t] = sum_j weight[t, j] * y[row_of_slot[t*k + j]].
  at::Tensor (*unpermute_forward)(const at::Tensor& y, const at::Tensor& weight,
                                  const at::Tensor& row_of_slot) = nullptr;
  // Returns {grad_y [N*k, H], grad_weight [N, k] fp32}.
  std::pair<at::Tensor, at::Tensor> (*unpermute_backward)(const at::Tensor& grad_out,
                                                          const at::Tensor& y,
                                                          const at::Tensor& weight,
                                                          const at::Tensor& row_of_slot,
                                                          const at::Tensor& slot) = nullptr;

  // Name of the implementation, for `hetmoe devices` and benchmark records.
  std::string implementation;

  bool complete() const {
    return route_forward && route_backward && permute_forward && permute_backward &&
           expert_ffn_forward && expert_ffn_backward && unpermute_forward && unpermute_backward;
  }
};

// The portable implementation: plain ATen calls, valid on any device ATen supports. The CPU
// backend and (until it has its own kernels) the CUDA backend register it.
const MoEKernels& aten_moe_kernels();

}  // namespace hetmoe
