// The four MoE operators as autograd functions with explicit backward passes. Each looks up the
// backend that owns its input tensor and runs that backend's kernels (hetmoe/device/kernels.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "hetmoe/device/kernels.h"

namespace hetmoe::ops {

// Scores, top-k selection and routing weights from router logits [N, E] (any float dtype; the
// scores are computed in fp32). scores and expert_weight carry gradients back to the logits;
// expert_index and tokens_per_expert are integer outputs without gradients.
RouteResult route(const at::Tensor& logits, const RouteParams& params);

// Gathers the rows of x [N, H] into expert-contiguous order (stable counting order). `permuted`
// carries gradients back to x. With options.capacity >= 0, slots over an expert's capacity are
// dropped (lowest options.priority first) and counted in `dropped`.
PermuteResult permute(const at::Tensor& x, const at::Tensor& expert_index, int64_t num_experts,
                      const PermuteOptions& options = {});

// Grouped SwiGLU expert FFN over expert-contiguous rows x [M, H] with w13 [E, H, 2F] (gate | up)
// and w2 [E, F, H]; tokens_per_expert [E] sums to M. Differentiable in x, w13 and w2.
at::Tensor expert_ffn(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                      const at::Tensor& tokens_per_expert);

// Scatters expert outputs y [R, H] back to token order, weighting each row by its routing
// weight ([N, k]) and summing a token's k rows. Differentiable in y and weight.
at::Tensor unpermute(const at::Tensor& y, const at::Tensor& weight, const PermuteResult& perm);

// x [..., in] @ w [out, in]^T through the backend's GEMM (MoEKernels::matmul), differentiable in
// both; at::linear where the backend has none.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w);

}  // namespace hetmoe::ops
