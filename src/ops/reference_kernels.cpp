// The naive kernel table (hetmoe/ops/moe_ops.h, reference_moe_kernels): forward entries are plain
// loops on host fp32 copies, backward entries recompute a naive forward under autograd. Written to
// be checked by eye, not to be fast: `hetmoe check --kernels` trains with it beside the optimised
// table to show that the two give the same losses.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <vector>

#include "hetmoe/ops/moe_ops.h"
#include "hetmoe/ops/reference.h"

namespace hetmoe::ops {
namespace {

at::Tensor host_f32(const at::Tensor& t) {
  return t.detach().to(at::kCPU, at::kFloat).contiguous();
}
at::Tensor host_i64(const at::Tensor& t) {
  return t.detach().to(at::kCPU, at::kLong).contiguous();
}
// A host result back to where and in what dtype `like` lives.
at::Tensor like(const at::Tensor& host, const at::Tensor& like) {
  return host.to(like.device(), like.scalar_type());
}

// The routing weights of the chosen experts from differentiable scores (what route computes).
at::Tensor chosen_weights(const at::Tensor& scores, const at::Tensor& index, bool renormalize) {
  at::Tensor w = scores.gather(1, index);
  return renormalize ? w / (w.sum(1, true) + 1e-20) : w;  // route_token.h's kRenormEps
}

RouteResult route_forward(const at::Tensor& logits, const RouteParams& p) {
  at::NoGradGuard no_grad;
  RouteParams host = p;
  if (p.bias.defined()) host.bias = host_f32(p.bias);
  RouteResult r = reference::route(host_f32(logits), host);
  r.scores = r.scores.to(logits.device());
  r.expert_index = r.expert_index.to(logits.device());
  r.expert_weight = r.expert_weight.to(logits.device());
  r.tokens_per_expert = r.tokens_per_expert.to(logits.device());
  return r;
}

// The logits' gradient: scores are a function of logits that can be written again from the scores
// themselves (softmax(log s) = s for a softmax, sigmoid(logit(s)) = s), so autograd differentiates
// the same naive expressions the forward used.
at::Tensor route_backward(const at::Tensor& grad_scores, const at::Tensor& grad_weight,
                          const at::Tensor& scores, const at::Tensor& expert_index,
                          const RouteParams& p) {
  at::AutoGradMode grad_mode(true);  // backward passes run with gradients off
  at::Tensor s = host_f32(scores).to(at::kDouble);
  at::Tensor l = (p.sigmoid ? at::log(s) - at::log1p(-s) : at::log(s)).requires_grad_(true);
  at::Tensor again = p.sigmoid ? at::sigmoid(l) : at::softmax(l, -1);
  at::Tensor w = chosen_weights(again, host_i64(expert_index), p.renormalize);
  std::vector<at::Tensor> outputs, grads;
  if (grad_weight.defined()) {
    outputs.push_back(w);
    grads.push_back(host_f32(grad_weight).to(at::kDouble));
  }
  if (grad_scores.defined()) {
    outputs.push_back(again);
    grads.push_back(host_f32(grad_scores).to(at::kDouble));
  }
  if (outputs.empty()) return at::zeros_like(scores);
  at::Tensor g = torch::autograd::grad(outputs, {l}, grads)[0];
  return g.to(scores.device(), at::kFloat);
}

PermuteResult permute_forward(const at::Tensor& x, const at::Tensor& expert_index,
                              int64_t num_experts, const PermuteOptions& options) {
  const int64_t n = expert_index.size(0), k = expert_index.size(1);
  at::Tensor idx = host_i64(expert_index).reshape(-1);
  at::Tensor keep = options.capacity >= 0
                        ? reference::capacity_keep(idx.view({n, k}), host_f32(options.priority),
                                                   num_experts, options.capacity)
                        : at::ones({n * k}, at::kBool);
  const int64_t* e_of = idx.data_ptr<int64_t>();
  const bool* kept = keep.data_ptr<bool>();
  // Expert by expert, the kept slots in slot order.
  std::vector<int64_t> source, slots, counts(static_cast<size_t>(num_experts), 0);
  std::vector<int64_t> row_of(static_cast<size_t>(n * k), -1);
  int64_t dropped = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    for (int64_t s = 0; s < n * k; ++s) {
      if (e_of[s] != e) continue;
      if (!kept[s]) {
        ++dropped;
        continue;
      }
      row_of[static_cast<size_t>(s)] = static_cast<int64_t>(slots.size());
      slots.push_back(s);
      source.push_back(s / k);
      ++counts[static_cast<size_t>(e)];
    }
  }
  auto tensor = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::kLong).to(x.device());
  };
  PermuteResult r;
  r.source_row = tensor(source);
  r.slot = tensor(slots);
  r.row_of_slot = tensor(row_of);
  r.tokens_per_expert = tensor(counts);
  r.dropped = at::scalar_tensor(dropped, at::kLong).to(x.device());
  at::Tensor hx = host_f32(x), out = at::zeros({static_cast<int64_t>(source.size()), x.size(1)});
  for (size_t i = 0; i < source.size(); ++i) out[static_cast<int64_t>(i)].copy_(hx[source[i]]);
  r.permuted = like(out, x);
  return r;
}

at::Tensor permute_backward(const at::Tensor& grad_permuted, const at::Tensor& row_of_slot,
                            int64_t top_k) {
  at::Tensor g = host_f32(grad_permuted), rows = host_i64(row_of_slot);
  const int64_t n = rows.numel() / top_k, h = g.size(1);
  at::Tensor out = at::zeros({n, h});
  const float* gp = g.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < top_k; ++j)
      if (const int64_t row = r[t * top_k + j]; row >= 0)
        for (int64_t c = 0; c < h; ++c) op[t * h + c] += gp[row * h + c];
  return like(out, grad_permuted);
}

// Expert e's rows [offset, offset + count) of the expert-ordered input.
struct Slices {
  std::vector<int64_t> offset, count;
  explicit Slices(const at::Tensor& tokens_per_expert) {
    at::Tensor c = host_i64(tokens_per_expert);
    int64_t at_row = 0;
    for (int64_t e = 0; e < c.numel(); ++e) {
      offset.push_back(at_row);
      count.push_back(c.data_ptr<int64_t>()[e]);
      at_row += count.back();
    }
  }
};

at::Tensor expert_ffn_forward(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                              const at::Tensor& tokens_per_expert, at::Tensor* h_out) {
  at::NoGradGuard no_grad;
  const Slices sl(tokens_per_expert);
  const int64_t f = w2.size(1);
  at::Tensor y = at::zeros({x.size(0), w2.size(2)}, x.options());
  at::Tensor h = at::zeros({x.size(0), 2 * f}, x.options());
  for (size_t e = 0; e < sl.count.size(); ++e) {
    if (sl.count[e] == 0) continue;
    at::Tensor xe = x.narrow(0, sl.offset[e], sl.count[e]);
    const auto ei = static_cast<int64_t>(e);
    h.narrow(0, sl.offset[e], sl.count[e]).copy_(at::matmul(xe, w13[ei]));
    y.narrow(0, sl.offset[e], sl.count[e]).copy_(reference::swiglu_expert(xe, w13[ei], w2[ei]));
  }
  if (h_out) *h_out = h;
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> expert_ffn_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& /*h*/, const at::Tensor& w13,
    const at::Tensor& w2, const at::Tensor& tokens_per_expert) {
  at::AutoGradMode grad_mode(true);
  const Slices sl(tokens_per_expert);
  at::Tensor gx = at::zeros_like(x), gw13 = at::zeros_like(w13), gw2 = at::zeros_like(w2);
  for (size_t e = 0; e < sl.count.size(); ++e) {
    if (sl.count[e] == 0) continue;
    const auto ei = static_cast<int64_t>(e);
    at::Tensor xe = x.narrow(0, sl.offset[e], sl.count[e]).detach().requires_grad_(true);
    at::Tensor w13e = w13[ei].detach().requires_grad_(true);
    at::Tensor w2e = w2[ei].detach().requires_grad_(true);
    at::Tensor ye = reference::swiglu_expert(xe, w13e, w2e);
    auto g =
        torch::autograd::grad({ye}, {xe, w13e, w2e}, {grad_y.narrow(0, sl.offset[e], sl.count[e])});
    gx.narrow(0, sl.offset[e], sl.count[e]).copy_(g[0]);
    gw13[ei].copy_(g[1]);
    gw2[ei].copy_(g[2]);
  }
  return {gx, gw13, gw2};
}

at::Tensor unpermute_forward(const at::Tensor& y, const at::Tensor& weight,
                             const at::Tensor& row_of_slot) {
  at::Tensor hy = host_f32(y), w = host_f32(weight), rows = host_i64(row_of_slot);
  const int64_t n = weight.size(0), k = weight.size(1), h = y.size(1);
  at::Tensor out = at::zeros({n, h});
  const float* yp = hy.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j)
      if (const int64_t row = r[t * k + j]; row >= 0)
        for (int64_t c = 0; c < h; ++c) op[t * h + c] += wp[t * k + j] * yp[row * h + c];
  return like(out, y);
}

std::pair<at::Tensor, at::Tensor> unpermute_backward(const at::Tensor& grad_out,
                                                     const at::Tensor& y, const at::Tensor& weight,
                                                     const at::Tensor& row_of_slot,
                                                     const at::Tensor& /*slot*/) {
  at::Tensor go = host_f32(grad_out), hy = host_f32(y), w = host_f32(weight);
  at::Tensor rows = host_i64(row_of_slot);
  const int64_t n = weight.size(0), k = weight.size(1), h = y.size(1);
  at::Tensor gy = at::zeros({y.size(0), h}), gw = at::zeros({n, k});
  const float* gp = go.data_ptr<float>();
  const float* yp = hy.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  float* gyp = gy.data_ptr<float>();
  float* gwp = gw.data_ptr<float>();
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t row = r[t * k + j];
      if (row < 0) continue;  // dropped: no row, zero gradient
      double dot = 0;
      for (int64_t c = 0; c < h; ++c) {
        gyp[row * h + c] = wp[t * k + j] * gp[t * h + c];
        dot += static_cast<double>(gp[t * h + c]) * yp[row * h + c];
      }
      gwp[t * k + j] = static_cast<float>(dot);
    }
  }
  return {like(gy, y), gw.to(weight.device())};
}

}  // namespace

const MoEKernels& reference_moe_kernels() {
  static const MoEKernels table{route_forward,      route_backward,
                                permute_forward,    permute_backward,
                                expert_ffn_forward, expert_ffn_backward,
                                unpermute_forward,  unpermute_backward,
                                /*matmul=*/nullptr, "reference (naive loops, autograd backward)"};
  return table;
}

}  // namespace hetmoe::ops
