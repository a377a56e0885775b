// The MoE kernel table a backend fills in: the forward and backward kernels behind the four MoE
// operators (route, permute, expert SwiGLU FFN, unpermute). The autograd operators in hetmoe/ops
// call only these entries, so a backend changes how they run without touching the model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>

namespace hetmoe {

// What is fixed for one routing call.
struct RouteParams {
  int64_t top_k = 2;
  bool sigmoid = false;     // false: softmax scores; true: sigmoid scores
  bool renormalize = true;  // top-k weights divided by their sum
  // Group-limited routing: the experts form n_groups contiguous groups, a group's score is the
  // sum of its group_members best (biased) scores (1: the best, DeepSeek-V2; 2: DeepSeek-V3 and
  // Ling 2.0), and a token chooses its experts only in its topk_groups best groups. n_groups == 1
  // disables it.
  int64_t n_groups = 1;
  int64_t topk_groups = 1;
  int64_t group_members = 1;
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

// Capacity limit of a permutation. Dropless (capacity < 0) by default.
struct PermuteOptions {
  // Slots an expert may take; the rest are dropped: they get no row, contribute nothing to their
  // token's output and receive no gradient. -1: no limit.
  int64_t capacity = -1;
  // [N, k] fp32, needed with a capacity: an expert over capacity keeps its highest-priority
  // slots (ties: the earlier slot) and drops the lowest-priority ones first.
  at::Tensor priority;
};

// Row map of a permutation into expert-contiguous order. Routing slot s = token * k + j is the
// j-th expert choice of a token; permuted row i holds one slot. R = N*k - dropped rows.
struct PermuteResult {
  at::Tensor permuted;           // [R, H] rows of x in expert order (stable within an expert)
  at::Tensor source_row;         // [R] int64: permuted row i came from token source_row[i]
  at::Tensor slot;               // [R] int64: permuted row i holds routing slot slot[i]
  at::Tensor row_of_slot;        // [N*k] int64: slot s sits in row row_of_slot[s]; -1: dropped
  at::Tensor tokens_per_expert;  // [E] int64 rows kept per expert (sums to R)
  at::Tensor dropped;            // [] int64 slots dropped over capacity (0 when dropless)
};

// out = a @ b, or out += a @ b when accumulate; a [m, k], b [k, n] and out [m, n] are 2-D and may
// be transposed views of contiguous tensors.
using MatmulFn = void (*)(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                          bool accumulate);

struct MoEKernels {
  // logits [N, E] fp32 -> scores, selection and weights.
  RouteResult (*route_forward)(const at::Tensor& logits, const RouteParams& p) = nullptr;
  // Gradient of the logits given gradients of scores ([N,E] or undefined) and of expert_weight.
  at::Tensor (*route_backward)(const at::Tensor& grad_scores, const at::Tensor& grad_weight,
                               const at::Tensor& scores, const at::Tensor& expert_index,
                               const RouteParams& p) = nullptr;

  // x [N, H], expert_index [N, k] -> rows grouped by expert.
  PermuteResult (*permute_forward)(const at::Tensor& x, const at::Tensor& expert_index,
                                   int64_t num_experts, const PermuteOptions& options) = nullptr;
  // grad_permuted [R, H] -> grad_x [N, H]: the sum of a token's kept rows (a gather, so the
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

  // y [R, H] in expert order, weight [N, k] -> out [N, H]:
  // out[t] = sum over kept j of weight[t, j] * y[row_of_slot[t*k + j]].
  at::Tensor (*unpermute_forward)(const at::Tensor& y, const at::Tensor& weight,
                                  const at::Tensor& row_of_slot) = nullptr;
  // Returns {grad_y [R, H], grad_weight [N, k] fp32, 0 for dropped slots}.
  std::pair<at::Tensor, at::Tensor> (*unpermute_backward)(const at::Tensor& grad_out,
                                                          const at::Tensor& y,
                                                          const at::Tensor& weight,
                                                          const at::Tensor& row_of_slot,
                                                          const at::Tensor& slot) = nullptr;

  // Dense GEMM used by the model's linear layers and the grouped expert FFN. nullptr: the layers
  // use at::linear with LibTorch's own autograd.
  MatmulFn matmul = nullptr;

  // Name of the implementation, for `hetmoe devices` and benchmark records.
  std::string implementation;

  bool complete() const {
    return route_forward && route_backward && permute_forward && permute_backward &&
           expert_ffn_forward && expert_ffn_backward && unpermute_forward && unpermute_backward;
  }
};

// The portable implementation: plain ATen calls, valid on any device ATen supports. It is the
// baseline the backends' own kernels are tested against, and what they fall back to.
const MoEKernels& aten_moe_kernels();

// Building blocks of the portable kernels that backends reuse.
// Which routing slots ([N*k] bool) survive a capacity, by the PermuteOptions policy.
at::Tensor capacity_keep_mask(const at::Tensor& expert_index, const at::Tensor& priority,
                              int64_t num_experts, int64_t capacity);
// a = silu(gate) * up for h = [gate | up] (halves of the last dimension), and its backward
// into one [..., 2F] buffer; ATen element-wise kernels, any device.
at::Tensor swiglu_activation(const at::Tensor& h);
at::Tensor swiglu_activation_backward(const at::Tensor& grad_a, const at::Tensor& h);
// The grouped SwiGLU FFN (expert_ffn_forward/backward above) over any GEMM: one call per expert
// slice into preallocated outputs, no per-expert allocation.
at::Tensor grouped_swiglu_forward(MatmulFn mm, const at::Tensor& x, const at::Tensor& w13,
                                  const at::Tensor& w2, const at::Tensor& tokens_per_expert,
                                  at::Tensor* h_out);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_swiglu_backward(
    MatmulFn mm, const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h,
    const at::Tensor& w13, const at::Tensor& w2, const at::Tensor& tokens_per_expert);

}  // namespace hetmoe
