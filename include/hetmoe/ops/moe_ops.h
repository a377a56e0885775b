// The four MoE operators as autograd functions with explicit backward passes. Each looks up the
// backend that owns its input tensor and runs that backend's kernels (hetmoe/device/kernels.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "hetmoe/device/kernels.h"

namespace hetmoe::ops {

// Which kernel table the operators run. Process-wide (the autograd engine may run backward passes
// on its own threads); switch it only between steps, never while a graph is alive.
enum class KernelImpl {
  Native,    // the tensor's backend's own table (default): fused CPU loops, CUDA kernels, oneDNN
  Portable,  // the plain-ATen table every backend is tested against (aten_moe_kernels)
  Reference  // naive per-token loops with autograd backward passes (reference_moe_kernels)
};
void set_kernel_impl(KernelImpl impl);
KernelImpl kernel_impl();
// "native" | "portable" | "reference"; parse throws hetmoe::Error naming the text otherwise.
std::string to_string(KernelImpl impl);
KernelImpl parse_kernel_impl(const std::string& text);

// Seconds spent in the MoE kernels, forward and backward together, per operator.
struct OpSeconds {
  double route = 0, permute = 0, experts = 0, unpermute = 0;
};
// Times the kernels of CPU tensors from now on (or stops; process-wide, off by default). Device
// kernels return before they finish, so their host time says nothing: a GPU's time split needs
// a profiler (nsys, rocprof).
void set_op_timing(bool on);
bool op_timing();
// The time accumulated since the last call (then zero).
OpSeconds take_op_seconds();

// Sets an implementation for the lifetime of the guard and restores the previous one after.
class KernelImplGuard {
 public:
  explicit KernelImplGuard(KernelImpl impl) : previous_(kernel_impl()) { set_kernel_impl(impl); }
  ~KernelImplGuard() { set_kernel_impl(previous_); }
  KernelImplGuard(const KernelImplGuard&) = delete;
  KernelImplGuard& operator=(const KernelImplGuard&) = delete;

 private:
  KernelImpl previous_;
};

// The naive table: every forward entry a plain loop over tokens, slots and experts in fp32 on the
// host, every backward entry the autograd gradient of a recomputed naive forward. Slow; it is the
// "obviously right" side of `hetmoe check --kernels` and of the kernel tests. Any device.
const MoEKernels& reference_moe_kernels();

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

// silu(gate) * up for h = [gate | up] (halves of the last dimension), differentiable in h; the
// backward writes both halves' gradients into one buffer (no zero-filled slice gradients).
// Like the MoE operators above, it has no double backward (create_graph).
at::Tensor swiglu(const at::Tensor& h);

// Rotary position embedding, rotate-half layout: each pair (i, i + d/2) of x [..., T, d] turns by
// the angle whose cos and sin are cos[t, i] and sin[t, i] ([T, d/2], x's dtype). Returns a
// contiguous tensor. Differentiable in x: the backward is the inverse rotation, four element-wise
// passes each way on any device (the composite formula took seven forward and a dozen backward,
// zero-filled slice gradients among them). No double backward (create_graph).
at::Tensor rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace hetmoe::ops
