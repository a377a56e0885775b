// CPU MoE kernels. Routing, permutation and combine are single fused passes over rows, split
// across threads with at::parallel_for (each output row is written by exactly one thread, so the
// results do not depend on the thread count); the expert GEMMs go through oneDNN.
#include "kernels/cpu/cpu_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/common/route_token.h"
#include "kernels/cpu/dnnl_gemm.h"

namespace hetmoe::cpu {
namespace {

// Rows per parallel task: enough work per task to amortise the dispatch.
int64_t grain_for(int64_t row_elems) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_elems));
}

RouteResult route_forward(const at::Tensor& logits_in, const RouteParams& p) {
  const at::Tensor logits = logits_in.to(at::kFloat).contiguous();
  const int64_t n = logits.size(0), e = logits.size(1), k = p.top_k;
  at::Tensor bias_t =
      p.bias.defined() ? p.bias.to(at::kCPU, at::kFloat).contiguous() : at::Tensor();
  RouteResult r;
  r.scores = at::empty({n, e}, logits.options());
  r.expert_index = at::empty({n, k}, logits.options().dtype(at::kLong));
  r.expert_weight = at::empty({n, k}, logits.options());
  const float* l_all = logits.data_ptr<float>();
  const float* bias = bias_t.defined() ? bias_t.data_ptr<float>() : nullptr;
  float* s_all = r.scores.data_ptr<float>();
  int64_t* idx_all = r.expert_index.data_ptr<int64_t>();
  float* w_all = r.expert_weight.data_ptr<float>();

  at::parallel_for(0, n, grain_for(e), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      router::route_token(l_all + t * e, bias, static_cast<int>(e), static_cast<int>(k),
                          static_cast<int>(p.n_groups), static_cast<int>(p.topk_groups),
                          static_cast<int>(p.group_members), p.sigmoid, p.renormalize,
                          s_all + t * e, idx_all + t * k, w_all + t * k);
  });
  r.tokens_per_expert = at::zeros({e}, logits.options().dtype(at::kLong));
  int64_t* counts = r.tokens_per_expert.data_ptr<int64_t>();
  for (int64_t s = 0; s < n * k; ++s) ++counts[idx_all[s]];
  return r;
}

at::Tensor route_backward(const at::Tensor& grad_scores, const at::Tensor& grad_weight,
                          const at::Tensor& scores, const at::Tensor& expert_index,
                          const RouteParams& p) {
  const int64_t n = scores.size(0), e = scores.size(1), k = expert_index.size(1);
  const at::Tensor sc = scores.contiguous(), idx = expert_index.contiguous();
  const at::Tensor gs =
      grad_scores.defined() ? grad_scores.to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor gw =
      grad_weight.defined() ? grad_weight.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor out = at::empty({n, e}, sc.options());
  const float* s_all = sc.data_ptr<float>();
  const int64_t* idx_all = idx.data_ptr<int64_t>();
  const float* gs_all = gs.defined() ? gs.data_ptr<float>() : nullptr;
  const float* gw_all = gw.defined() ? gw.data_ptr<float>() : nullptr;
  float* o_all = out.data_ptr<float>();
  at::parallel_for(0, n, grain_for(e), [&](int64_t begin, int64_t end) {
    std::vector<float> grad_sel(k);
    for (int64_t t = begin; t < end; ++t)
      router::route_token_backward(gs_all ? gs_all + t * e : nullptr,
                                   gw_all ? gw_all + t * k : nullptr, s_all + t * e,
                                   idx_all + t * k, static_cast<int>(e), static_cast<int>(k),
                                   p.sigmoid, p.renormalize, grad_sel.data(), o_all + t * e);
  });
  return out;
}

PermuteResult permute_forward(const at::Tensor& x, const at::Tensor& expert_index,
                              int64_t num_experts, const PermuteOptions& options) {
  const at::Tensor idx = expert_index.contiguous();
  const int64_t k = idx.size(1), slots = idx.numel(), hidden = x.size(1);
  const int64_t* ix = idx.data_ptr<int64_t>();
  auto long_opts = idx.options();
  std::vector<int64_t> counts(num_experts, 0);
  for (int64_t s = 0; s < slots; ++s) {
    TORCH_CHECK(ix[s] >= 0 && ix[s] < num_experts, "expert index ", ix[s], " outside [0, ",
                num_experts, ")");
    ++counts[ix[s]];
  }
  // Stable counting sort: the slots of each expert in slot order.
  std::vector<int64_t> start(num_experts + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), start.begin() + 1);
  std::vector<int64_t> by_expert(slots), cursor(start.begin(), start.end() - 1);
  for (int64_t s = 0; s < slots; ++s) by_expert[cursor[ix[s]]++] = s;

  std::vector<char> keep(slots, 1);
  int64_t dropped = 0;
  if (options.capacity >= 0) {
    const at::Tensor pr = options.priority.to(at::kCPU, at::kFloat).contiguous();
    const float* prio = pr.data_ptr<float>();
    std::vector<int64_t> order;
    for (int64_t ex = 0; ex < num_experts; ++ex) {
      if (counts[ex] <= options.capacity) continue;
      // Over capacity: keep the highest priorities (ties: the earlier slot), drop the rest.
      order.assign(by_expert.begin() + start[ex], by_expert.begin() + start[ex + 1]);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return prio[a] > prio[b]; });
      for (size_t i = static_cast<size_t>(options.capacity); i < order.size(); ++i) {
        keep[order[i]] = 0;
        ++dropped;
      }
    }
  }
  const int64_t rows = slots - dropped;
  PermuteResult r;
  r.slot = at::empty({rows}, long_opts);
  r.source_row = at::empty({rows}, long_opts);
  r.row_of_slot = at::empty({slots}, long_opts);
  r.tokens_per_expert = at::zeros({num_experts}, long_opts);
  int64_t* slot = r.slot.data_ptr<int64_t>();
  int64_t* source = r.source_row.data_ptr<int64_t>();
  int64_t* row_of = r.row_of_slot.data_ptr<int64_t>();
  int64_t* kept = r.tokens_per_expert.data_ptr<int64_t>();
  int64_t row = 0;
  for (int64_t i = 0; i < slots; ++i) {
    const int64_t s = by_expert[i];
    if (!keep[s]) {
      row_of[s] = -1;
      continue;
    }
    ++kept[ix[s]];
    slot[row] = s;
    source[row] = s / k;
    row_of[s] = row++;
  }
  r.dropped = at::scalar_tensor(dropped, long_opts);

  const at::Tensor xc = x.contiguous();
  r.permuted = at::empty({rows, hidden}, x.options());
  const size_t row_bytes = static_cast<size_t>(hidden) * x.element_size();
  const char* src = static_cast<const char*>(xc.data_ptr());
  char* dst = static_cast<char*>(r.permuted.data_ptr());
  at::parallel_for(0, rows, grain_for(hidden), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      std::memcpy(dst + i * row_bytes, src + source[i] * row_bytes, row_bytes);
  });
  return r;
}

// out[t] = sum over kept j of w_j * y[row_of_slot[t*k + j]], accumulated in the wider of fp32
// and the data type, j in order; w == nullptr means all ones (the backward of permute).
template <typename T>
void combine(const T* y, int64_t hidden, const at::opmath_type<T>* w, const int64_t* row_of,
             int64_t n, int64_t k, T* out) {
  using Acc = at::opmath_type<T>;
  at::parallel_for(0, n, grain_for(hidden * k), [&](int64_t begin, int64_t end) {
    std::vector<Acc> acc(hidden);
    for (int64_t t = begin; t < end; ++t) {
      std::fill(acc.begin(), acc.end(), Acc(0));
      for (int64_t j = 0; j < k; ++j) {
        const int64_t row = row_of[t * k + j];
        if (row < 0) continue;  // dropped over capacity
        const Acc wj = w ? w[t * k + j] : Acc(1);
        const T* yr = y + row * hidden;
        for (int64_t c = 0; c < hidden; ++c) acc[c] += wj * static_cast<Acc>(yr[c]);
      }
      T* o = out + t * hidden;
      for (int64_t c = 0; c < hidden; ++c) o[c] = static_cast<T>(acc[c]);
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) {
  return at::promote_types(t, at::kFloat);
}

at::Tensor permute_backward(const at::Tensor& grad_permuted, const at::Tensor& row_of_slot,
                            int64_t top_k) {
  const int64_t n = row_of_slot.numel() / top_k, hidden = grad_permuted.size(1);
  const at::Tensor g = grad_permuted.contiguous(), ros = row_of_slot.contiguous();
  at::Tensor out = at::empty({n, hidden}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, g.scalar_type(), "permute_backward", [&] {
        combine<scalar_t>(g.data_ptr<scalar_t>(), hidden, nullptr, ros.data_ptr<int64_t>(), n,
                          top_k, out.data_ptr<scalar_t>());
      });
  return out;
}

at::Tensor unpermute_forward(const at::Tensor& y, const at::Tensor& weight,
                             const at::Tensor& row_of_slot) {
  const int64_t n = weight.size(0), k = weight.size(1), hidden = y.size(1);
  const at::Tensor yc = y.contiguous(), ros = row_of_slot.contiguous();
  const at::Tensor w = weight.to(acc_type(y.scalar_type())).contiguous();
  at::Tensor out = at::empty({n, hidden}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_forward", [&] {
        using Acc = at::opmath_type<scalar_t>;
        combine<scalar_t>(yc.data_ptr<scalar_t>(), hidden, w.data_ptr<Acc>(),
                          ros.data_ptr<int64_t>(), n, k, out.data_ptr<scalar_t>());
      });
  return out;
}

std::pair<at::Tensor, at::Tensor> unpermute_backward(const at::Tensor& grad_out,
                                                     const at::Tensor& y, const at::Tensor& weight,
                                                     const at::Tensor& row_of_slot,
                                                     const at::Tensor& slot) {
  const int64_t rows = y.size(0), hidden = y.size(1), k = weight.size(1);
  const at::ScalarType acc = acc_type(y.scalar_type());
  const at::Tensor yc = y.contiguous(), sl = slot.contiguous();
  const at::Tensor go = grad_out.to(y.scalar_type()).contiguous();
  const at::Tensor w = weight.to(acc).contiguous();
  at::Tensor grad_y = at::empty_like(yc);
  at::Tensor grad_w = at::zeros({weight.numel()}, w.options());  // dropped slots stay 0
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_backward", [&] {
        using Acc = at::opmath_type<scalar_t>;
        const scalar_t* g = go.data_ptr<scalar_t>();
        const scalar_t* yv = yc.data_ptr<scalar_t>();
        const int64_t* s = sl.data_ptr<int64_t>();
        const Acc* wv = w.data_ptr<Acc>();
        scalar_t* gy = grad_y.data_ptr<scalar_t>();
        Acc* gw = grad_w.data_ptr<Acc>();
        at::parallel_for(0, rows, grain_for(hidden), [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* gt = g + (s[i] / k) * hidden;
            const scalar_t* yi = yv + i * hidden;
            scalar_t* gyi = gy + i * hidden;
            const Acc wi = wv[s[i]];
            Acc dot = 0;
            for (int64_t c = 0; c < hidden; ++c) {
              const Acc gc = static_cast<Acc>(gt[c]);
              gyi[c] = static_cast<scalar_t>(wi * gc);
              dot += gc * static_cast<Acc>(yi[c]);
            }
            gw[s[i]] = dot;
          }
        });
      });
  return {grad_y, grad_w.view(weight.sizes()).to(weight.scalar_type())};
}

// A 2-D operand as row-major GEMM arguments: 'N' with leading dimension stride(0), or 'T' for a
// transposed view; anything else is made contiguous first (into *holder).
void as_gemm_operand(const at::Tensor& t, at::Tensor* holder, char* trans, int64_t* ld) {
  const int64_t rows = t.size(0), cols = t.size(1);
  if (t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, cols)) {
    *trans = 'N';
    *ld = t.stride(0);
    *holder = t;
  } else if (t.stride(0) == 1 && t.stride(1) >= std::max<int64_t>(1, rows)) {
    *trans = 'T';
    *ld = t.stride(1);
    *holder = t;
  } else {
    *holder = t.contiguous();
    *trans = 'N';
    *ld = std::max<int64_t>(1, cols);
  }
}

at::Tensor expert_ffn_forward(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                              const at::Tensor& tokens_per_expert, at::Tensor* h_out) {
  return grouped_swiglu_forward(cpu_matmul, x, w13, w2, tokens_per_expert, h_out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> expert_ffn_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w13,
    const at::Tensor& w2, const at::Tensor& tokens_per_expert) {
  return grouped_swiglu_backward(cpu_matmul, grad_y, x, h, w13, w2, tokens_per_expert);
}

void aten_mm(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (accumulate)
    out.addmm_(a, b);
  else
    at::mm_out(out, a, b);
}

// LibTorch's reduced-precision CPU GEMMs are oneDNN matmul primitives, JIT-compiled once per
// shape (about 0.8 ms each on a 2-core Xeon with AMX) and kept in a cache of 1024. The grouped
// expert GEMMs take their rows from the tokens-per-expert counts, which change every step, so
// almost every call compiled a new primitive: bf16 bench-small spent more time compiling GEMMs
// than running them. Each of the two dimensions that can follow the counts (rows, and the
// reduction of a weight gradient) is split into a multiple of kShapeBlock and the rest, so a
// layer's GEMMs take at most rows / kShapeBlock + kShapeBlock shapes, which stay cached. Rows
// split exactly; a split reduction adds its second part into the first's result (one more
// rounding in the output dtype, only when the reduction is not a multiple of kShapeBlock).
constexpr int64_t kShapeBlock = 64;

void shape_blocked_mm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                      bool accumulate) {
  const int64_t m = a.size(0), k = a.size(1);
  const int64_t m_full = m / kShapeBlock * kShapeBlock, k_full = k / kShapeBlock * kShapeBlock;
  auto rows = [&](int64_t first, int64_t count) {
    const at::Tensor o = out.narrow(0, first, count), ar = a.narrow(0, first, count);
    if (k_full == 0 || k_full == k) return aten_mm(o, ar, b, accumulate);
    aten_mm(o, ar.narrow(1, 0, k_full), b.narrow(0, 0, k_full), accumulate);
    aten_mm(o, ar.narrow(1, k_full, k - k_full), b.narrow(0, k_full, k - k_full), true);
  };
  if (m_full == 0 || m_full == m) return rows(0, m);
  rows(0, m_full);
  rows(m_full, m - m_full);
}

}  // namespace

void cpu_matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const DnnlGemm* dnnl = dnnl_gemm();
  const int64_t m = a.size(0), kk = a.size(1), n = b.size(1);
  const bool fp32 = out.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat &&
                    b.scalar_type() == at::kFloat;
  const at::ScalarType t = a.scalar_type();
  if ((t == at::kBFloat16 || t == at::kHalf) && b.scalar_type() == t && out.scalar_type() == t)
    return shape_blocked_mm(out, a, b, accumulate);
  if (!dnnl || !fp32 || out.stride(1) != 1 || out.stride(0) < std::max<int64_t>(1, n))
    return aten_mm(out, a, b, accumulate);
  if (m == 0 || n == 0) return;
  if (kk == 0) {
    if (!accumulate) at::Tensor(out).zero_();
    return;
  }
  at::Tensor ah, bh;
  char ta, tb;
  int64_t lda, ldb;
  as_gemm_operand(a, &ah, &ta, &lda);
  as_gemm_operand(b, &bh, &tb, &ldb);
  const int status =
      dnnl->sgemm(ta, tb, m, n, kk, 1.0f, ah.data_ptr<float>(), lda, bh.data_ptr<float>(), ldb,
                  accumulate ? 1.0f : 0.0f, out.data_ptr<float>(), out.stride(0));
  TORCH_CHECK(status == 0, "oneDNN sgemm failed with status ", status, " for [", m, "x", kk,
              "] @ [", kk, "x", n, "]");
}

const MoEKernels& cpu_moe_kernels() {
  static const MoEKernels table{route_forward,
                                route_backward,
                                permute_forward,
                                permute_backward,
                                expert_ffn_forward,
                                expert_ffn_backward,
                                unpermute_forward,
                                unpermute_backward,
                                cpu_matmul,
                                "cpu (fused parallel routing, permutation and combine; " +
                                    std::string(dnnl_gemm() ? "oneDNN" : "LibTorch BLAS") +
                                    " GEMMs)"};
  return table;
}

}  // namespace hetmoe::cpu
