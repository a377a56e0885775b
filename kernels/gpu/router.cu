// Fused router: scores, top-k, renormalisation and per-expert counts in one kernel, and its
// backward. One thread per token; e and k are small (e <= 1024, k <= 32), so a token's work is
// O(k * e) reads of its own row, which stays in L1/L2. The per-token math is the CPU kernels'
// (kernels/common/route_token.h), so both backends choose the same experts.
#include "compat.h"
#include "kernels/common/route_token.h"
#include "moe_kernels.h"

namespace hetmoe::gpu {
namespace {

constexpr int kThreads = 128;

__global__ void router_forward_kernel(const float* __restrict__ logits,
                                      const float* __restrict__ bias, int64_t n, int e, int k,
                                      int n_groups, int topk_groups, int group_members,
                                      bool sigmoid, bool renormalize, float* __restrict__ scores,
                                      int64_t* __restrict__ index, float* __restrict__ weight,
                                      unsigned long long* __restrict__ counts) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    router::route_token(logits + t * e, bias, e, k, n_groups, topk_groups, group_members, sigmoid,
                        renormalize, scores + t * e, index + t * k, weight + t * k);
    for (int j = 0; j < k; ++j) atomicAdd(counts + index[t * k + j], 1ULL);
  }
}

__global__ void router_backward_kernel(const float* __restrict__ grad_scores,
                                       const float* __restrict__ grad_weight,
                                       const float* __restrict__ scores,
                                       const int64_t* __restrict__ index, int64_t n, int e, int k,
                                       bool sigmoid, bool renormalize,
                                       float* __restrict__ grad_logits) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float grad_sel[kMaxTopK];
    router::route_token_backward(
        grad_scores ? grad_scores + t * e : nullptr, grad_weight ? grad_weight + t * k : nullptr,
        scores + t * e, index + t * k, e, k, sigmoid, renormalize, grad_sel, grad_logits + t * e);
  }
}

}  // namespace

const char* error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int router_forward(const float* logits, const float* bias, int64_t n, int e, int k, int n_groups,
                   int topk_groups, int group_members, bool sigmoid, bool renormalize,
                   float* scores, int64_t* index, float* weight, int64_t* counts, Stream stream) {
  if (k < 1 || k > kMaxTopK || e < 1 || e > kMaxExperts)
    return static_cast<int>(cudaErrorInvalidValue);
  cudaStream_t s = as_stream(stream);
  int rc = static_cast<int>(cudaMemsetAsync(counts, 0, sizeof(int64_t) * e, s));
  if (rc != 0 || n == 0) return rc;
  router_forward_kernel<<<blocks_for(n, kThreads), kThreads, 0, s>>>(
      logits, bias, n, e, k, n_groups, topk_groups, group_members, sigmoid, renormalize, scores,
      index, weight, reinterpret_cast<unsigned long long*>(counts));
  return last_error();
}

int router_backward(const float* grad_scores, const float* grad_weight, const float* scores,
                    const int64_t* index, int64_t n, int e, int k, bool sigmoid, bool renormalize,
                    float* grad_logits, Stream stream) {
  if (k < 1 || k > kMaxTopK) return static_cast<int>(cudaErrorInvalidValue);
  if (n == 0) return 0;
  router_backward_kernel<<<blocks_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      grad_scores, grad_weight, scores, index, n, e, k, sigmoid, renormalize, grad_logits);
  return last_error();
}

}  // namespace hetmoe::gpu
