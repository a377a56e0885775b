// Fused router: scores, top-k, renormalisation and per-expert counts in one kernel, and its
// backward. One thread per token; e and k are small (e <= 1024, k <= 32), so a token's work is
// O(k * e) reads of its own row, which stays in L1/L2.
#include "compat.h"
#include "moe_kernels.h"

namespace hetmoe::gpu {
namespace {

constexpr int kThreads = 128;

// True when (v, i) ranks strictly after (prev_v, prev_i) in "score descending, index ascending".
__device__ __forceinline__ bool after(float v, int i, float prev_v, int prev_i) {
  return v < prev_v || (v == prev_v && i > prev_i);
}

__global__ void router_forward_kernel(const float* __restrict__ logits,
                                      const float* __restrict__ bias, int64_t n, int e, int k,
                                      int n_groups, int topk_groups, bool sigmoid, bool renormalize,
                                      float* __restrict__ scores, int64_t* __restrict__ index,
                                      float* __restrict__ weight,
                                      unsigned long long* __restrict__ counts) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* l = logits + t * e;
    float* s = scores + t * e;
    if (sigmoid) {
      for (int i = 0; i < e; ++i) s[i] = 1.0f / (1.0f + expf(-l[i]));
    } else {
      float mx = -INFINITY;
      for (int i = 0; i < e; ++i) mx = fmaxf(mx, l[i]);
      float sum = 0.0f;
      for (int i = 0; i < e; ++i) sum += expf(l[i] - mx);
      const float inv = 1.0f / sum;
      for (int i = 0; i < e; ++i) s[i] = expf(l[i] - mx) * inv;
    }
    auto choice = [&](int i) { return bias ? s[i] + bias[i] : s[i]; };
    // Groups this token may choose from, as a bit mask (all when n_groups == 1).
    const int per_group = e / n_groups;
    unsigned long long allowed = n_groups == 1 ? ~0ULL : 0ULL;
    if (n_groups > 1) {
      float prev_v = INFINITY;
      int prev_g = -1;
      for (int j = 0; j < topk_groups; ++j) {
        float best_v = -INFINITY;
        int best_g = -1;
        for (int g = 0; g < n_groups; ++g) {
          float v = -INFINITY;
          for (int i = g * per_group; i < (g + 1) * per_group; ++i) v = fmaxf(v, choice(i));
          if (after(v, g, prev_v, prev_g) && (best_g < 0 || after(best_v, best_g, v, g))) {
            best_v = v;
            best_g = g;
          }
        }
        allowed |= 1ULL << best_g;
        prev_v = best_v;
        prev_g = best_g;
      }
    }
    float prev_v = INFINITY, total = 0.0f;
    int prev_i = -1;
    for (int j = 0; j < k; ++j) {
      float best_v = -INFINITY;
      int best_i = -1;
      for (int i = 0; i < e; ++i) {
        if (!((allowed >> (i / per_group)) & 1ULL)) continue;
        const float v = choice(i);
        if (after(v, i, prev_v, prev_i) && (best_i < 0 || after(best_v, best_i, v, i))) {
          best_v = v;
          best_i = i;
        }
      }
      index[t * k + j] = best_i;
      weight[t * k + j] = s[best_i];
      total += s[best_i];
      atomicAdd(counts + best_i, 1ULL);
      prev_v = best_v;
      prev_i = best_i;
    }
    if (renormalize) {
      const float inv = 1.0f / total;
      for (int j = 0; j < k; ++j) weight[t * k + j] *= inv;
    }
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
    const float* s = scores + t * e;
    const int64_t* idx = index + t * k;
    // Gradient reaching each selected score through the (renormalised) weights.
    float grad_sel[32];
    float sum = 0.0f, dot = 0.0f;
    for (int j = 0; j < k; ++j) {
      grad_sel[j] = grad_weight ? grad_weight[t * k + j] : 0.0f;
      sum += s[idx[j]];
    }
    if (renormalize) {
      for (int j = 0; j < k; ++j) dot += grad_sel[j] * s[idx[j]] / sum;
      for (int j = 0; j < k; ++j) grad_sel[j] = (grad_sel[j] - dot) / sum;
    }
    auto grad_score = [&](int i) {
      float g = grad_scores ? grad_scores[t * e + i] : 0.0f;
      for (int j = 0; j < k; ++j)
        if (idx[j] == i) g += grad_sel[j];
      return g;
    };
    float* out = grad_logits + t * e;
    if (sigmoid) {
      for (int i = 0; i < e; ++i) out[i] = grad_score(i) * s[i] * (1.0f - s[i]);
    } else {
      float gs = 0.0f;
      for (int i = 0; i < e; ++i) gs += grad_score(i) * s[i];
      for (int i = 0; i < e; ++i) out[i] = s[i] * (grad_score(i) - gs);
    }
  }
}

}  // namespace

const char* error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int router_forward(const float* logits, const float* bias, int64_t n, int e, int k, int n_groups,
                   int topk_groups, bool sigmoid, bool renormalize, float* scores, int64_t* index,
                   float* weight, int64_t* counts, Stream stream) {
  cudaStream_t s = as_stream(stream);
  int rc = static_cast<int>(cudaMemsetAsync(counts, 0, sizeof(int64_t) * e, s));
  if (rc != 0 || n == 0) return rc;
  router_forward_kernel<<<blocks_for(n, kThreads), kThreads, 0, s>>>(
      logits, bias, n, e, k, n_groups, topk_groups, sigmoid, renormalize, scores, index, weight,
      reinterpret_cast<unsigned long long*>(counts));
  return last_error();
}

int router_backward(const float* grad_scores, const float* grad_weight, const float* scores,
                    const int64_t* index, int64_t n, int e, int k, bool sigmoid, bool renormalize,
                    float* grad_logits, Stream stream) {
  if (n == 0) return 0;
  router_backward_kernel<<<blocks_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      grad_scores, grad_weight, scores, index, n, e, k, sigmoid, renormalize, grad_logits);
  return last_error();
}

}  // namespace hetmoe::gpu
