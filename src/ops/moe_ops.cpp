// Autograd wrappers around the backend kernel table. Forward and backward both dispatch through
// backend_for(tensor).kernels(), so the model never names a backend.
#include "hetmoe/ops/moe_ops.h"

#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <atomic>
#include <chrono>

#include "hetmoe/core/error.h"
#include "hetmoe/device/registry.h"
#include "kernels/common/route_token.h"

namespace hetmoe::ops {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

std::atomic<KernelImpl> g_kernel_impl{KernelImpl::Native};

// Op timing: nanoseconds per operator, added by an OpTimer around each kernel call. The same
// scope names the call for LibTorch's profiler (run.profile_start), on every device.
enum OpSlot { kRoute, kPermute, kExperts, kUnpermute, kSlots };
constexpr const char* kSlotNames[kSlots] = {"hetmoe::route", "hetmoe::permute", "hetmoe::experts",
                                            "hetmoe::unpermute"};
std::atomic<bool> g_op_timing{false};
std::atomic<int64_t> g_op_ns[kSlots];

class OpTimer {
 public:
  OpTimer(OpSlot slot, const at::Tensor& t)
      : slot_(g_op_timing.load(std::memory_order_relaxed) && t.is_cpu() ? slot : kSlots),
        scope_(at::RecordScope::USER_SCOPE) {
    if (scope_.isActive()) scope_.before(kSlotNames[slot]);
    if (slot_ != kSlots) start_ = std::chrono::steady_clock::now();
  }
  ~OpTimer() {
    if (slot_ == kSlots) return;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - start_);
    g_op_ns[slot_].fetch_add(ns.count(), std::memory_order_relaxed);
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  OpSlot slot_;
  at::RecordFunction scope_;
  std::chrono::steady_clock::time_point start_;
};

const MoEKernels& kernels_for(const at::Tensor& t) {
  switch (g_kernel_impl.load(std::memory_order_relaxed)) {
    case KernelImpl::Portable:
      return aten_moe_kernels();
    case KernelImpl::Reference:
      return reference_moe_kernels();
    case KernelImpl::Native:
      break;
  }
  return backend_for(t).kernels();
}

RouteParams params_from(AutogradContext* ctx) {
  RouteParams p;
  p.top_k = ctx->saved_data["top_k"].toInt();
  p.sigmoid = ctx->saved_data["sigmoid"].toBool();
  p.renormalize = ctx->saved_data["renormalize"].toBool();
  return p;
}

struct RouteFn : torch::autograd::Function<RouteFn> {
  // `bias` is empty when there is none (autograd functions take no undefined inputs); the
  // selection options beyond top_k/sigmoid/renormalize do not affect the backward.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits,
                               const at::Tensor& bias, int64_t top_k, bool sigmoid,
                               bool renormalize, int64_t n_groups, int64_t topk_groups,
                               int64_t group_members) {
    RouteParams p;
    p.top_k = top_k;
    p.sigmoid = sigmoid;
    p.renormalize = renormalize;
    p.n_groups = n_groups;
    p.topk_groups = topk_groups;
    p.group_members = group_members;
    if (bias.numel() > 0) p.bias = bias;
    OpTimer timer(kRoute, logits);
    RouteResult r = kernels_for(logits).route_forward(logits, p);
    ctx->saved_data["top_k"] = top_k;
    ctx->saved_data["sigmoid"] = sigmoid;
    ctx->saved_data["renormalize"] = renormalize;
    ctx->save_for_backward({r.scores, r.expert_index});
    ctx->mark_non_differentiable({r.expert_index, r.tokens_per_expert});
    return {r.scores, r.expert_index, r.expert_weight, r.tokens_per_expert};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    OpTimer timer(kRoute, saved[0]);
    at::Tensor g = kernels_for(saved[0]).route_backward(grads[0], grads[2], saved[0], saved[1],
                                                        params_from(ctx));
    return {g,
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};  // one per forward input
  }
};

struct PermuteFn : torch::autograd::Function<PermuteFn> {
  // `priority` is empty without a capacity.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& expert_index, int64_t num_experts,
                               int64_t capacity, const at::Tensor& priority) {
    PermuteOptions options{capacity, priority.numel() > 0 ? priority : at::Tensor()};
    OpTimer timer(kPermute, x);
    PermuteResult r = kernels_for(x).permute_forward(x, expert_index, num_experts, options);
    ctx->saved_data["top_k"] = expert_index.size(1);
    ctx->save_for_backward({r.row_of_slot});
    ctx->mark_non_differentiable(
        {r.source_row, r.slot, r.row_of_slot, r.tokens_per_expert, r.dropped});
    return {r.permuted, r.source_row, r.slot, r.row_of_slot, r.tokens_per_expert, r.dropped};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor row_of_slot = ctx->get_saved_variables()[0];
    OpTimer timer(kPermute, grads[0]);
    at::Tensor g = kernels_for(grads[0]).permute_backward(grads[0].contiguous(), row_of_slot,
                                                          ctx->saved_data["top_k"].toInt());
    return {g, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// y = x @ w^T for x [M, in] and w [out, in] through the backend's GEMM.
struct LinearFn : torch::autograd::Function<LinearFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    at::Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
    kernels_for(x).matmul(y, x, w.t(), false);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1];
    at::Tensor g = grads[0].contiguous();
    const MatmulFn mm = kernels_for(x).matmul;
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) {
      gx = at::empty_like(x);
      mm(gx, g, w, false);
    }
    if (ctx->needs_input_grad(1)) {
      gw = at::empty_like(w);
      mm(gw, g.t(), x, false);
    }
    return {gx, gw};
  }
};

// out = x rotated by (cos, sin) pairwise over the halves of the last dimension, in four passes
// and no temporaries; sign -1 turns the other way (the backward).
void rotate_halves(const at::Tensor& out, const at::Tensor& x, const at::Tensor& cos,
                   const at::Tensor& sin, double sign) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  at::Tensor o1 = out.narrow(-1, 0, half), o2 = out.narrow(-1, half, half);
  at::mul_out(o1, x1, cos).addcmul_(x2, sin, -sign);  // x1 cos - x2 sin
  at::mul_out(o2, x2, cos).addcmul_(x1, sin, sign);   // x2 cos + x1 sin
}

struct RotaryFn : torch::autograd::Function<RotaryFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    at::Tensor out = at::empty(x.sizes(), x.options());
    rotate_halves(out, x, cos, sin, 1.0);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // A rotation's transpose is its inverse.
    auto s = ctx->get_saved_variables();
    at::Tensor g = at::empty(grads[0].sizes(), grads[0].options());
    rotate_halves(g, grads[0], s[0], s[1], -1.0);
    return {g, at::Tensor(), at::Tensor()};
  }
};

struct SwigluFn : torch::autograd::Function<SwigluFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h) {
    ctx->save_for_backward({h});
    return swiglu_activation(h);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {swiglu_activation_backward(grads[0], ctx->get_saved_variables()[0])};
  }
};

struct ExpertFfnFn : torch::autograd::Function<ExpertFfnFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w13,
                            const at::Tensor& w2, const at::Tensor& tokens_per_expert) {
    at::Tensor h;
    OpTimer timer(kExperts, x);
    at::Tensor y = kernels_for(x).expert_ffn_forward(x, w13, w2, tokens_per_expert, &h);
    ctx->save_for_backward({x, h, w13, w2, tokens_per_expert});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    OpTimer timer(kExperts, s[0]);
    auto [gx, gw13, gw2] =
        kernels_for(s[0]).expert_ffn_backward(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4]);
    return {gx, gw13, gw2, at::Tensor()};
  }
};

struct UnpermuteFn : torch::autograd::Function<UnpermuteFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& weight,
                            const at::Tensor& row_of_slot, const at::Tensor& slot) {
    ctx->save_for_backward({y, weight, row_of_slot, slot});
    OpTimer timer(kUnpermute, y);
    return kernels_for(y).unpermute_forward(y, weight, row_of_slot);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    OpTimer timer(kUnpermute, s[0]);
    auto [gy, gw] =
        kernels_for(s[0]).unpermute_backward(grads[0].contiguous(), s[0], s[1], s[2], s[3]);
    return {gy, gw, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void set_kernel_impl(KernelImpl impl) {
  g_kernel_impl.store(impl);
}

KernelImpl kernel_impl() {
  return g_kernel_impl.load();
}

void set_op_timing(bool on) {
  g_op_timing.store(on);
}

bool op_timing() {
  return g_op_timing.load();
}

OpSeconds take_op_seconds() {
  auto take = [](OpSlot s) { return 1e-9 * static_cast<double>(g_op_ns[s].exchange(0)); };
  OpSeconds r;
  r.route = take(kRoute);
  r.permute = take(kPermute);
  r.experts = take(kExperts);
  r.unpermute = take(kUnpermute);
  return r;
}

std::string to_string(KernelImpl impl) {
  switch (impl) {
    case KernelImpl::Native:
      return "native";
    case KernelImpl::Portable:
      return "portable";
    case KernelImpl::Reference:
      return "reference";
  }
  return "unknown";
}

KernelImpl parse_kernel_impl(const std::string& text) {
  for (KernelImpl k : {KernelImpl::Native, KernelImpl::Portable, KernelImpl::Reference})
    if (to_string(k) == text) return k;
  HETMOE_FAIL("ops", "unknown kernel implementation '", text,
              "' (known: native, portable, reference)");
}

RouteResult route(const at::Tensor& logits, const RouteParams& params) {
  HETMOE_CHECK(logits.dim() == 2, "route", "logits must be [tokens, experts], got ",
               logits.sizes());
  const int64_t e = logits.size(1);
  HETMOE_CHECK(params.n_groups >= 1 && e % params.n_groups == 0, "route", "n_groups ",
               params.n_groups, " must divide the ", e, " experts");
  HETMOE_CHECK(params.n_groups <= router::kMaxGroups, "route", "n_groups ", params.n_groups,
               " exceeds the router's limit of ", router::kMaxGroups);
  HETMOE_CHECK(params.topk_groups >= 1 && params.topk_groups <= params.n_groups, "route",
               "topk_groups ", params.topk_groups, " outside [1, ", params.n_groups, "]");
  HETMOE_CHECK(params.group_members >= 1 && params.group_members <= e / params.n_groups, "route",
               "group_members ", params.group_members, " outside [1, ", e / params.n_groups,
               "] (experts per group)");
  const int64_t choosable = params.n_groups > 1 ? params.topk_groups * (e / params.n_groups) : e;
  HETMOE_CHECK(params.top_k >= 1 && params.top_k <= choosable, "route", "top_k ", params.top_k,
               " outside [1, ", choosable, "] (experts in the chosen groups)");
  at::Tensor bias = at::empty({0}, logits.options().dtype(at::kFloat));
  if (params.bias.defined()) {
    HETMOE_CHECK(params.bias.numel() == e, "route", "bias has ", params.bias.numel(),
                 " entries for ", e, " experts");
    bias = params.bias.detach().to(logits.device(), at::kFloat).contiguous();
  }
  auto out =
      RouteFn::apply(logits.to(at::kFloat).contiguous(), bias, params.top_k, params.sigmoid,
                     params.renormalize, params.n_groups, params.topk_groups, params.group_members);
  return RouteResult{out[0], out[1], out[2], out[3]};
}

PermuteResult permute(const at::Tensor& x, const at::Tensor& expert_index, int64_t num_experts,
                      const PermuteOptions& options) {
  HETMOE_CHECK(x.dim() == 2 && expert_index.dim() == 2 && expert_index.size(0) == x.size(0),
               "permute", "expected x [N, H] and expert_index [N, k], got ", x.sizes(), " and ",
               expert_index.sizes());
  HETMOE_CHECK(expert_index.size(1) >= 1, "permute", "expert_index [N, k] needs k >= 1, got ",
               expert_index.sizes());
  HETMOE_CHECK(num_experts >= 1, "permute", "num_experts must be >= 1, got ", num_experts);
  if (expert_index.is_cpu() && expert_index.numel() > 0) {
    // One pass over N x k ids, on the host only: a GPU table checks on the device instead, as
    // checking here would wait for it.
    const auto [lo, hi] = at::aminmax(expert_index);
    const int64_t min = lo.item<int64_t>(), max = hi.item<int64_t>();
    HETMOE_CHECK(min >= 0 && max < num_experts, "permute", "expert indices must be in [0, ",
                 num_experts, "), got ", min, " to ", max);
  }
  at::Tensor priority = at::empty({0}, x.options().dtype(at::kFloat));
  if (options.capacity >= 0) {
    HETMOE_CHECK(options.priority.defined() && options.priority.sizes() == expert_index.sizes(),
                 "permute", "a capacity needs a priority of shape ", expert_index.sizes());
    priority = options.priority.detach().to(at::kFloat).contiguous();
  }
  auto out = PermuteFn::apply(x.contiguous(), expert_index.to(at::kLong).contiguous(), num_experts,
                              options.capacity, priority);
  return PermuteResult{out[0], out[1], out[2], out[3], out[4], out[5]};
}

at::Tensor expert_ffn(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                      const at::Tensor& tokens_per_expert) {
  HETMOE_CHECK(x.dim() == 2 && w13.dim() == 3 && w2.dim() == 3 && w13.size(0) == w2.size(0) &&
                   w13.size(1) == x.size(1) && w13.size(2) == 2 * w2.size(1) &&
                   w2.size(2) == x.size(1) && tokens_per_expert.numel() == w13.size(0),
               "expert_ffn", "shape mismatch: x ", x.sizes(), ", w13 ", w13.sizes(), ", w2 ",
               w2.sizes(), ", tokens_per_expert ", tokens_per_expert.sizes());
  if (tokens_per_expert.is_cpu()) {
    // The counts split x's rows among the experts (on the host only: on a GPU this would wait).
    const at::Tensor c = tokens_per_expert.to(at::kLong);
    const int64_t total = c.sum().item<int64_t>(), min = c.numel() ? c.min().item<int64_t>() : 0;
    HETMOE_CHECK(min >= 0 && total == x.size(0), "expert_ffn", "tokens_per_expert (sum ", total,
                 ", smallest ", min, ") must split x's ", x.size(0),
                 " rows among the experts: non-negative, summing to the rows");
  }
  return ExpertFfnFn::apply(x.contiguous(), w13.contiguous(), w2.contiguous(), tokens_per_expert);
}

at::Tensor unpermute(const at::Tensor& y, const at::Tensor& weight, const PermuteResult& perm) {
  HETMOE_CHECK(weight.dim() == 2 && y.dim() == 2 && y.size(0) == perm.slot.size(0) &&
                   weight.numel() == perm.row_of_slot.numel(),
               "unpermute", "expected y [", perm.slot.size(0), ", H] and weight [N, k] for ",
               perm.row_of_slot.numel(), " slots, got ", y.sizes(), " and ", weight.sizes());
  return UnpermuteFn::apply(y.contiguous(), weight.contiguous(), perm.row_of_slot, perm.slot);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w) {
  HETMOE_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "linear", "x ", x.sizes(),
               " does not fit weight ", w.sizes());
  const MoEKernels& k = kernels_for(x);
  if (!k.matmul || x.scalar_type() != w.scalar_type()) return at::linear(x, w);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.size(0);
  at::Tensor y = LinearFn::apply(x.reshape({-1, x.size(-1)}).contiguous(), w.contiguous());
  return y.view(out_shape);
}

at::Tensor swiglu(const at::Tensor& h) {
  HETMOE_CHECK(h.dim() >= 1 && h.size(-1) % 2 == 0, "swiglu", "h ", h.sizes(),
               " must have an even last dimension [gate | up]");
  return SwigluFn::apply(h);
}

at::Tensor rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  HETMOE_CHECK(x.dim() >= 2 && x.size(-1) % 2 == 0 && cos.dim() == 2 &&
                   cos.sizes() == sin.sizes() && cos.size(0) == x.size(-2) &&
                   cos.size(1) == x.size(-1) / 2,
               "rotary_embedding", "x ", x.sizes(), " needs cos and sin [", x.size(-2), ", ",
               x.size(-1) / 2, "], got ", cos.sizes(), " and ", sin.sizes());
  HETMOE_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
               "rotary_embedding", "cos and sin must have x's dtype ", x.scalar_type(), ", got ",
               cos.scalar_type(), " and ", sin.scalar_type());
  return RotaryFn::apply(x, cos, sin);
}

}  // namespace hetmoe::ops
