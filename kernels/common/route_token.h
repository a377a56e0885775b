// The router's per-token math, one source for the CPU kernels and the GPU kernels (nvcc and hipcc
// see it as __host__ __device__ code). Sharing it is what makes every backend choose the same
// experts, ties and bad inputs included, and round the weights the same way.
// Plain pointers and sizes only; no LibTorch and no allocation (the GPU runs it in one thread).
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HETMOE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HETMOE_HOST_DEVICE inline
#endif

namespace hetmoe::router {

// Group selection keeps its choice in a 64-bit mask.
constexpr int kMaxGroups = 64;

// Added to the sum the weights are renormalised by: sigmoid scores that all underflow to 0
// (logits below about -104) give weights 0 instead of 0/0. Below half an fp32 ulp of any sum
// over 1e-13, so it changes nothing else.
constexpr float kRenormEps = 1e-20f;

// True when (v, i) ranks strictly after (prev_v, prev_i) in "value descending, index ascending".
HETMOE_HOST_DEVICE bool after(float v, int i, float prev_v, int prev_i) {
  return v < prev_v || (v == prev_v && i > prev_i);
}

// What expert i is selected by: its score plus its bias. NaN ranks last, so a token whose logits
// went bad still selects k distinct experts inside [0, e) instead of none.
HETMOE_HOST_DEVICE float choice_of(const float* s, const float* bias, int i) {
  const float v = bias ? s[i] + bias[i] : s[i];
  return v != v ? -INFINITY : v;
}

// exp(x) in fp32, bit for bit the same on every backend. The library expf differs between them
// in the last bit (glibc's is within 0.502 ulp, CUDA's within 2), which is enough to rank two
// nearly tied experts differently on the CPU and the GPU. Here every multiply-add is an explicit
// fmaf (correctly rounded on the host and on both GPU vendors) and no product feeds a sum
// (nvcc and hipcc contract a * b + c into an FMA by default, the host compiler does not), and the
// exponent is set by integer arithmetic on the result's bits. Within 1 ulp of exp (0.46% of
// inputs are not correctly rounded); results below FLT_MIN flush to 0.
HETMOE_HOST_DEVICE float exp_fp32(float x) {
  if (x != x) return x;
  if (x > 89.0f) return INFINITY;
  if (x < -89.0f) return 0.0f;
  // x = n ln2 + r with |r| <= ln2 / 2: adding 1.5 * 2^23 rounds x / ln2 to an integer.
  constexpr float kShift = 12582912.0f;
  const float n = fmaf(x, 1.44269504f, kShift) - kShift;
  float r = fmaf(n, -0.693145752f, x);  // ln2 in two parts
  r = fmaf(n, -1.42860677e-6f, r);
  // exp(r) by its Taylor series to r^7 (Horner).
  float p = 1.98412698e-4f;
  p = fmaf(p, r, 1.38888889e-3f);
  p = fmaf(p, r, 8.33333333e-3f);
  p = fmaf(p, r, 4.16666667e-2f);
  p = fmaf(p, r, 1.66666667e-1f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  // p * 2^n: add n to p's exponent field.
  uint32_t bits;
  memcpy(&bits, &p, sizeof bits);
  const int biased = static_cast<int>((bits >> 23) & 0xffu) + static_cast<int>(n);
  if (biased <= 0) return 0.0f;
  if (biased >= 255) return INFINITY;
  bits = (bits & 0x807fffffu) | (static_cast<uint32_t>(biased) << 23);
  memcpy(&p, &bits, sizeof p);
  return p;
}

// scores[i] = softmax or sigmoid of the token's fp32 logits.
HETMOE_HOST_DEVICE void token_scores(const float* logits, int e, bool sigmoid, float* s) {
  if (sigmoid) {
    for (int i = 0; i < e; ++i) s[i] = 1.0f / (1.0f + exp_fp32(-logits[i]));
    return;
  }
  float mx = -INFINITY;
  for (int i = 0; i < e; ++i) mx = fmaxf(mx, logits[i]);
  float sum = 0.0f;
  for (int i = 0; i < e; ++i) {
    s[i] = exp_fp32(logits[i] - mx);
    sum += s[i];
  }
  const float inv = 1.0f / sum;
  for (int i = 0; i < e; ++i) s[i] *= inv;
}

// A group's score: the sum of its `members` best choice values, best first (members 1: its best;
// 2: DeepSeek-V3's top-2 sum). O(members x group size), no scratch memory.
HETMOE_HOST_DEVICE float group_score(const float* s, const float* bias, int first, int size,
                                     int members) {
  float sum = 0.0f, prev_v = INFINITY;
  int prev_i = -1;
  for (int m = 0; m < members; ++m) {
    float best_v = -INFINITY;
    int best_i = -1;
    for (int i = first; i < first + size; ++i) {
      const float v = choice_of(s, bias, i);
      if (after(v, i, prev_v, prev_i) && (best_i < 0 || after(best_v, best_i, v, i))) {
        best_v = v;
        best_i = i;
      }
    }
    sum += best_v;
    prev_v = best_v;
    prev_i = best_i;
  }
  // +inf and -inf members (infinite biases) sum to NaN: such a group ranks last, like a NaN
  // choice, so topk_groups groups are always chosen.
  return sum != sum ? -INFINITY : sum;
}

// Bit g set when the token may choose from group g: the topk_groups groups with the highest
// group_score (all groups when n_groups == 1). Requires n_groups <= kMaxGroups.
HETMOE_HOST_DEVICE uint64_t allowed_groups(const float* s, const float* bias, int e, int n_groups,
                                           int topk_groups, int group_members) {
  if (n_groups <= 1) return ~0ULL;
  const int per_group = e / n_groups;
  uint64_t allowed = 0;
  float prev_v = INFINITY;
  int prev_g = -1;
  for (int j = 0; j < topk_groups; ++j) {
    float best_v = -INFINITY;
    int best_g = -1;
    for (int g = 0; g < n_groups; ++g) {
      const float v = group_score(s, bias, g * per_group, per_group, group_members);
      if (after(v, g, prev_v, prev_g) && (best_g < 0 || after(best_v, best_g, v, g))) {
        best_v = v;
        best_g = g;
      }
    }
    allowed |= 1ULL << best_g;
    prev_v = best_v;
    prev_g = best_g;
  }
  return allowed;
}

// One token's forward: scores [e], then its k experts best first (ties to the lower id) among
// the allowed groups, and their unbiased scores as weights, renormalised to sum 1 when asked.
HETMOE_HOST_DEVICE void route_token(const float* logits, const float* bias, int e, int k,
                                    int n_groups, int topk_groups, int group_members, bool sigmoid,
                                    bool renormalize, float* s, int64_t* index, float* weight) {
  token_scores(logits, e, sigmoid, s);
  const uint64_t allowed = allowed_groups(s, bias, e, n_groups, topk_groups, group_members);
  const int per_group = n_groups > 1 ? e / n_groups : e;
  float prev_v = INFINITY, total = 0.0f;
  int prev_i = -1;
  for (int j = 0; j < k; ++j) {
    float best_v = -INFINITY;
    int best_i = -1;
    for (int i = 0; i < e; ++i) {
      if (!((allowed >> (i / per_group)) & 1ULL)) continue;
      const float v = choice_of(s, bias, i);
      if (after(v, i, prev_v, prev_i) && (best_i < 0 || after(best_v, best_i, v, i))) {
        best_v = v;
        best_i = i;
      }
    }
    index[j] = best_i;
    weight[j] = s[best_i];
    total += s[best_i];
    prev_v = best_v;
    prev_i = best_i;
  }
  if (renormalize)
    for (int j = 0; j < k; ++j) weight[j] /= total + kRenormEps;
}

// One token's backward: the logits' gradient from the scores' gradient (may be null) and the
// weights' gradient (may be null). grad_sel is scratch for k floats.
HETMOE_HOST_DEVICE void route_token_backward(const float* grad_scores, const float* grad_weight,
                                             const float* s, const int64_t* index, int e, int k,
                                             bool sigmoid, bool renormalize, float* grad_sel,
                                             float* grad_logits) {
  // The gradient reaching each selected score through its (renormalised) weight:
  // w_j = s_j / S gives dL/ds_j = (g_j - sum_i g_i w_i) / S, with S the sum plus kRenormEps.
  for (int j = 0; j < k; ++j) grad_sel[j] = grad_weight ? grad_weight[j] : 0.0f;
  if (renormalize && grad_weight) {
    float sum = 0.0f, dot = 0.0f;
    for (int j = 0; j < k; ++j) sum += s[index[j]];
    sum += kRenormEps;
    for (int j = 0; j < k; ++j) dot += grad_sel[j] * (s[index[j]] / sum);
    for (int j = 0; j < k; ++j) grad_sel[j] = (grad_sel[j] - dot) / sum;
  }
  // dL/ds_i, written into grad_logits first, then turned into dL/dlogit_i in place.
  for (int i = 0; i < e; ++i) grad_logits[i] = grad_scores ? grad_scores[i] : 0.0f;
  for (int j = 0; j < k; ++j) grad_logits[index[j]] += grad_sel[j];
  if (sigmoid) {
    for (int i = 0; i < e; ++i) grad_logits[i] = grad_logits[i] * s[i] * (1.0f - s[i]);
    return;
  }
  float dot = 0.0f;
  for (int i = 0; i < e; ++i) dot += grad_logits[i] * s[i];
  for (int i = 0; i < e; ++i) grad_logits[i] = s[i] * (grad_logits[i] - dot);
}

}  // namespace hetmoe::router
