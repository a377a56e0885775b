// Fused SwiGLU over the grouped GEMM output h = [gate | up]: a = silu(gate) * up, and its backward
// in one pass (the gate's sigmoid is recomputed, not stored).
#include <type_traits>

#include "compat.h"
#include "moe_kernels.h"

namespace hetmoe::gpu {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void swiglu_forward_kernel(const T* __restrict__ h, int64_t m, int64_t f,
                                      T* __restrict__ a) {
  const int64_t total = m * f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / f, c = i - r * f;
    const float g = to_float(h[r * 2 * f + c]), u = to_float(h[r * 2 * f + f + c]);
    from_float(g / (1.0f + expf(-g)) * u, a + i);
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* __restrict__ grad_a, const T* __restrict__ h,
                                       int64_t m, int64_t f, T* __restrict__ grad_h) {
  const int64_t total = m * f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / f, c = i - r * f;
    const float g = to_float(h[r * 2 * f + c]), u = to_float(h[r * 2 * f + f + c]);
    const float ga = to_float(grad_a[i]);
    const float sig = 1.0f / (1.0f + expf(-g));
    from_float(ga * u * sig * (1.0f + g * (1.0f - sig)), grad_h + r * 2 * f + c);
    from_float(ga * g * sig, grad_h + r * 2 * f + f + c);
  }
}

template <typename F>
int dispatch(DType dtype, F&& f) {
  if (dtype == DType::BF16) return f(static_cast<bf16*>(nullptr));
  return f(static_cast<float*>(nullptr));
}

}  // namespace

int swiglu_forward(const void* h, DType dtype, int64_t m, int64_t f, void* a, Stream stream) {
  if (m * f == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    swiglu_forward_kernel<<<blocks_for(m * f, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(h), m, f, static_cast<T*>(a));
    return last_error();
  });
}

int swiglu_backward(const void* grad_a, const void* h, DType dtype, int64_t m, int64_t f,
                    void* grad_h, Stream stream) {
  if (m * f == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    swiglu_backward_kernel<<<blocks_for(m * f, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(grad_a), static_cast<const T*>(h), m, f, static_cast<T*>(grad_h));
    return last_error();
  });
}

}  // namespace hetmoe::gpu
