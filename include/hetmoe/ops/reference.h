// Naive references for the MoE operators: loops over tokens and experts with plain ATen calls
// and autograd, written for clarity rather than speed. Tests hold every kernel to these.
#pragma once

#include <ATen/core/Tensor.h>

#include "hetmoe/device/kernels.h"

namespace hetmoe::ops::reference {

// Same contract as ops::route; gradients through autograd.
RouteResult route(const at::Tensor& logits, const RouteParams& params);

// One SwiGLU expert on rows x [n, H]: silu(x @ w13[:, :F]) * (x @ w13[:, F:]) @ w2.
at::Tensor swiglu_expert(const at::Tensor& x, const at::Tensor& w13_e, const at::Tensor& w2_e);

// The whole routed-expert computation token by token: out[t] = sum_j w[t,j] * E_{idx[t,j]}(x[t]).
at::Tensor moe_experts(const at::Tensor& x, const at::Tensor& expert_index,
                       const at::Tensor& expert_weight, const at::Tensor& w13,
                       const at::Tensor& w2);

// Which routing slots ([N*k] bool) survive a capacity: each expert ranks its slots by priority
// ([N, k], highest first, ties by slot) and keeps the first `capacity`.
at::Tensor capacity_keep(const at::Tensor& expert_index, const at::Tensor& priority,
                         int64_t num_experts, int64_t capacity);

// ops::rotary_embedding written out: [x1 cos - x2 sin, x2 cos + x1 sin], gradients by autograd.
at::Tensor rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace hetmoe::ops::reference
