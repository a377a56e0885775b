// The GPU backends' MoE kernel table (CUDA, and ROCm under HETMOE_GPU_VENDOR_HIP): the fused
// router, the device-side permutation, gathers and SwiGLU from kernels/gpu, and the grouped
// expert GEMMs through at::_grouped_mm for bf16 where it is native (offsets stay on the device:
// no tokens-per-expert host synchronisation). fp32 expert GEMMs, which _grouped_mm does not
// take, and other GPUs use the portable per-expert loop. The kernels read their inputs through
// data_ptr, so every entry makes them contiguous first (a no-op when they already are).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>

#include "device/gpu/gpu_kernels.h"
#include "hetmoe/core/error.h"
#include "kernels/gpu/moe_kernels.h"

namespace hetmoe {
namespace {

#if defined(HETMOE_GPU_VENDOR_HIP)
constexpr const char* kComponent = "rocm";
#else
constexpr const char* kComponent = "cuda";
#endif

void check(int code, const char* what) {
  HETMOE_CHECK(code == 0, kComponent, what, " failed: ", gpu::error_string(code));
}

// The current stream of the current device, as LibTorch's own kernels use it. Every table entry
// below first makes its tensors' device current (a DeviceGuard), so that is their device: a
// kernel launched while another GPU is current would run on that GPU's stream and context.
gpu::Stream stream() {
  const c10::impl::DeviceGuardImplInterface& impl = *c10::impl::getDeviceGuardImpl(kGpuDeviceType);
  return impl.getStream(impl.getDevice()).native_handle();
}

gpu::DType dtype_of(const at::Tensor& t) {
  if (t.scalar_type() == at::kBFloat16) return gpu::DType::BF16;
  HETMOE_CHECK(t.scalar_type() == at::kFloat, kComponent, "MoE kernels take fp32 or bf16, got ",
               c10::toString(t.scalar_type()));
  return gpu::DType::F32;
}

RouteResult route_forward(const at::Tensor& logits, const RouteParams& p) {
  const c10::DeviceGuard guard(logits.device());
  const int64_t n = logits.size(0), e = logits.size(1);
  HETMOE_CHECK(e <= gpu::kMaxExperts && p.top_k <= gpu::kMaxTopK, kComponent,
               "router kernel supports up to ", gpu::kMaxExperts, " experts and top_k ",
               gpu::kMaxTopK, ", got ", e, " and ", p.top_k);
  at::Tensor l = logits.contiguous();
  RouteResult r;
  r.scores = at::empty_like(l);
  r.expert_index = at::empty({n, p.top_k}, l.options().dtype(at::kLong));
  r.expert_weight = at::empty({n, p.top_k}, l.options());
  r.tokens_per_expert = at::empty({e}, l.options().dtype(at::kLong));
  at::Tensor bias = p.bias.defined() ? p.bias.to(l.device(), at::kFloat).contiguous() : p.bias;
  check(gpu::router_forward(
            l.data_ptr<float>(), bias.defined() ? bias.data_ptr<float>() : nullptr, n,
            static_cast<int>(e), static_cast<int>(p.top_k), static_cast<int>(p.n_groups),
            static_cast<int>(p.topk_groups), static_cast<int>(p.group_members), p.sigmoid,
            p.renormalize, r.scores.data_ptr<float>(), r.expert_index.data_ptr<int64_t>(),
            r.expert_weight.data_ptr<float>(), r.tokens_per_expert.data_ptr<int64_t>(), stream()),
        "router_forward");
  return r;
}

at::Tensor route_backward(const at::Tensor& grad_scores, const at::Tensor& grad_weight,
                          const at::Tensor& scores, const at::Tensor& expert_index,
                          const RouteParams& p) {
  const c10::DeviceGuard guard(scores.device());
  at::Tensor gs = grad_scores.defined() ? grad_scores.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor gw = grad_weight.defined() ? grad_weight.to(at::kFloat).contiguous() : at::Tensor();
  HETMOE_CHECK(p.top_k <= gpu::kMaxTopK, kComponent, "router backward kernel supports top_k up to ",
               gpu::kMaxTopK, ", got ", p.top_k);
  const at::Tensor s = scores.contiguous(), index = expert_index.contiguous();
  at::Tensor out = at::empty_like(s);
  check(gpu::router_backward(gs.defined() ? gs.data_ptr<float>() : nullptr,
                             gw.defined() ? gw.data_ptr<float>() : nullptr, s.data_ptr<float>(),
                             index.data_ptr<int64_t>(), s.size(0), static_cast<int>(s.size(1)),
                             static_cast<int>(p.top_k), p.sigmoid, p.renormalize,
                             out.data_ptr<float>(), stream()),
        "router_backward");
  return out;
}

PermuteResult permute_forward(const at::Tensor& x, const at::Tensor& expert_index,
                              int64_t num_experts, const PermuteOptions& options) {
  const c10::DeviceGuard guard(x.device());
  // Capacity dropping is rare and not the hot path: the portable kernels do it (the combine
  // kernels below skip the dropped slots' -1 rows).
  if (options.capacity >= 0)
    return aten_moe_kernels().permute_forward(x, expert_index, num_experts, options);
  // The counting sort scans the experts' offsets in one block's shared memory. Expert indices
  // outside [0, num_experts) cannot be checked here without waiting for the device: permute_map
  // fails a device-side check on them instead (kernels/gpu/moe_kernels.h).
  HETMOE_CHECK(num_experts >= 1 && num_experts <= gpu::kMaxExperts, kComponent,
               "permute kernel supports 1 to ", gpu::kMaxExperts, " experts, got ", num_experts);
  const int64_t k = expert_index.size(1), m = expert_index.numel();
  const at::Tensor index = expert_index.contiguous(), xc = x.contiguous();
  auto opts = index.options().dtype(at::kLong);
  PermuteResult r;
  r.slot = at::empty({m}, opts);
  r.source_row = at::empty({m}, opts);
  r.row_of_slot = at::empty({m}, opts);
  r.tokens_per_expert = at::empty({num_experts}, opts);
  at::Tensor workspace = at::empty(
      {static_cast<int64_t>(gpu::permute_workspace_bytes(m, static_cast<int>(num_experts)))},
      index.options().dtype(at::kByte));
  check(gpu::permute_map(index.data_ptr<int64_t>(), m, static_cast<int>(num_experts),
                         static_cast<int>(k), workspace.data_ptr(), r.slot.data_ptr<int64_t>(),
                         r.source_row.data_ptr<int64_t>(), r.row_of_slot.data_ptr<int64_t>(),
                         r.tokens_per_expert.data_ptr<int64_t>(), stream()),
        "permute_map");
  r.permuted = at::empty({m, xc.size(1)}, xc.options());
  check(gpu::gather_rows(xc.data_ptr(), dtype_of(xc), xc.size(1), r.source_row.data_ptr<int64_t>(),
                         m, r.permuted.data_ptr(), stream()),
        "gather_rows");
  r.dropped = at::zeros({}, opts);
  return r;
}

at::Tensor permute_backward(const at::Tensor& grad_permuted, const at::Tensor& row_of_slot,
                            int64_t top_k) {
  const c10::DeviceGuard guard(grad_permuted.device());
  const at::Tensor g = grad_permuted.contiguous(), rows = row_of_slot.contiguous();
  const int64_t n = rows.numel() / top_k, h = g.size(1);
  at::Tensor out = at::empty({n, h}, g.options());
  check(gpu::sum_slot_rows(g.data_ptr(), dtype_of(g), h, rows.data_ptr<int64_t>(), n,
                           static_cast<int>(top_k), out.data_ptr(), stream()),
        "sum_slot_rows");
  return out;
}

// Contiguous and starting on a 16-byte boundary, as at::_grouped_mm requires of its operands
// (a view at an odd element offset is contiguous but not aligned).
bool aligned_rows(const at::Tensor& t) {
  return t.is_contiguous() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// at::_grouped_mm takes bf16 with 16-byte aligned rows and fewer than 1024 groups
// (grouped_mm_fits), and is a native grouped kernel only on some GPUs (elsewhere LibTorch runs
// its own loop over groups, reading the offsets on the host); other cases, and operands that are
// not contiguous and aligned (views into a larger buffer), take the portable per-expert loop.
bool use_grouped_mm(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2) {
  return x.scalar_type() == at::kBFloat16 && grouped_mm_fits(x.size(1), w2.size(1), w2.size(0)) &&
         grouped_mm_native(gpu_identity(x.get_device())) && aligned_rows(x) && aligned_rows(w13) &&
         aligned_rows(w2);
}

at::Tensor offsets_of(const at::Tensor& tokens_per_expert) {
  return tokens_per_expert.cumsum(0).to(at::kInt);
}

at::Tensor swiglu(const at::Tensor& h_in) {
  const at::Tensor h = h_in.contiguous();
  const int64_t m = h.size(0), f = h.size(1) / 2;
  at::Tensor a = at::empty({m, f}, h.options());
  check(gpu::swiglu_forward(h.data_ptr(), dtype_of(h), m, f, a.data_ptr(), stream()),
        "swiglu_forward");
  return a;
}

at::Tensor expert_ffn_forward(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w2,
                              const at::Tensor& tokens_per_expert, at::Tensor* h_out) {
  const c10::DeviceGuard guard(x.device());
  if (!use_grouped_mm(x, w13, w2))
    return aten_moe_kernels().expert_ffn_forward(x, w13, w2, tokens_per_expert, h_out);
  at::Tensor offs = offsets_of(tokens_per_expert);
  at::Tensor h = at::_grouped_mm(x, w13, offs);
  at::Tensor y = at::_grouped_mm(swiglu(h), w2, offs);
  if (h_out) *h_out = h;
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_ffn_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h_in, const at::Tensor& w13,
    const at::Tensor& w2, const at::Tensor& tokens_per_expert) {
  const at::Tensor h = h_in.contiguous();
  const int64_t m = h.size(0), f = h.size(1) / 2;
  at::Tensor offs = offsets_of(tokens_per_expert);
  at::Tensor a = swiglu(h);
  // Weight gradients: per expert, X_e^T dY_e, a 2-D x 2-D grouped product split along the rows.
  at::Tensor grad_w2 = at::_grouped_mm(a.t(), grad_y, offs);
  const at::Tensor grad_a = at::_grouped_mm(grad_y, w2.transpose(1, 2), offs).contiguous();
  at::Tensor grad_h = at::empty_like(h);
  check(gpu::swiglu_backward(grad_a.data_ptr(), h.data_ptr(), dtype_of(h), m, f, grad_h.data_ptr(),
                             stream()),
        "swiglu_backward");
  at::Tensor grad_w13 = at::_grouped_mm(x.t(), grad_h, offs);
  at::Tensor grad_x = at::_grouped_mm(grad_h, w13.transpose(1, 2), offs);
  // An expert without tokens has a zero weight gradient, but _grouped_mm leaves a zero-row
  // group's output unwritten on sm_100 (pytorch/pytorch#172439; sm_90's CUTLASS kernel writes
  // zeros). The fill runs on the device, with no host synchronisation, but costs a pass over
  // both gradients (about 2 GB per Ling-Lite layer): every GPU but sm_90 pays it.
  if (!grouped_mm_writes_empty_groups(gpu_identity(x.get_device()))) {
    const at::Tensor idle = (tokens_per_expert == 0).view({-1, 1, 1});
    grad_w2.masked_fill_(idle, 0);
    grad_w13.masked_fill_(idle, 0);
  }
  return {grad_x, grad_w13, grad_w2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> expert_ffn_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w13,
    const at::Tensor& w2, const at::Tensor& tokens_per_expert) {
  const c10::DeviceGuard guard(x.device());
  if (!use_grouped_mm(x, w13, w2))  // the forward's choice
    return aten_moe_kernels().expert_ffn_backward(grad_y, x, h, w13, w2, tokens_per_expert);
  // The incoming gradient is autograd's: copied when it is a strided or offset view.
  const at::Tensor gy = aligned_rows(grad_y) ? grad_y : grad_y.clone(at::MemoryFormat::Contiguous);
  return grouped_ffn_backward(gy, x, h, w13, w2, tokens_per_expert);
}

at::Tensor unpermute_forward(const at::Tensor& y, const at::Tensor& weight,
                             const at::Tensor& row_of_slot) {
  const c10::DeviceGuard guard(y.device());
  const int64_t n = weight.size(0), k = weight.size(1), h = y.size(1);
  const at::Tensor yc = y.contiguous(), rows = row_of_slot.contiguous();
  at::Tensor w = weight.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({n, h}, yc.options());
  check(gpu::unpermute_forward(yc.data_ptr(), dtype_of(yc), h, w.data_ptr<float>(),
                               rows.data_ptr<int64_t>(), n, static_cast<int>(k), out.data_ptr(),
                               stream()),
        "unpermute_forward");
  return out;
}

std::pair<at::Tensor, at::Tensor> unpermute_backward(const at::Tensor& grad_out,
                                                     const at::Tensor& y, const at::Tensor& weight,
                                                     const at::Tensor& row_of_slot,
                                                     const at::Tensor& slot) {
  const c10::DeviceGuard guard(y.device());
  const int64_t m = y.size(0), h = y.size(1);
  const at::Tensor yc = y.contiguous(), sl = slot.contiguous();
  at::Tensor w = weight.to(at::kFloat).contiguous();
  at::Tensor go = grad_out.to(y.scalar_type()).contiguous();
  // source_row of permuted row i is slot[i] / k.
  at::Tensor source_row = at::div(sl, weight.size(1), "floor");
  at::Tensor grad_y = at::empty_like(yc);
  // Dropped slots have no row and keep a zero gradient.
  at::Tensor grad_w = m == weight.numel() ? at::empty({weight.numel()}, w.options())
                                          : at::zeros({weight.numel()}, w.options());
  check(gpu::unpermute_backward(go.data_ptr(), yc.data_ptr(), dtype_of(yc), h, w.data_ptr<float>(),
                                source_row.data_ptr<int64_t>(), sl.data_ptr<int64_t>(), m,
                                grad_y.data_ptr(), grad_w.data_ptr<float>(), stream()),
        "unpermute_backward");
  return {grad_y, grad_w.view(weight.sizes()).to(weight.scalar_type())};
}

}  // namespace

const MoEKernels& gpu_moe_kernels() {
  static const MoEKernels table{
      route_forward,
      route_backward,
      permute_forward,
      permute_backward,
      expert_ffn_forward,
      expert_ffn_backward,
      unpermute_forward,
      unpermute_backward,
      /*matmul=*/nullptr,
      std::string(kComponent) +
          " (fused router, device permutation, _grouped_mm for bf16 where native)"};
  return table;
}

}  // namespace hetmoe
