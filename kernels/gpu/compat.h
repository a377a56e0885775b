// One kernel source for both GPU vendors: under hipcc the CUDA runtime names used by hetmoe's
// kernels map to their HIP equivalents (the way ggml's HIP backend reuses its CUDA sources).
// Only what kernels/gpu uses is mapped; add a name here when a kernel needs one.
#pragma once

#if defined(__HIPCC__)
#include <hip/hip_bfloat16.h>
#include <hip/hip_runtime.h>

#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaStream_t hipStream_t
#define cudaGetLastError hipGetLastError
#define cudaGetErrorString hipGetErrorString
#define cudaMemsetAsync hipMemsetAsync
#define cudaDeviceProp hipDeviceProp_t
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaErrorNoDevice hipErrorNoDevice
#define cudaErrorInvalidValue hipErrorInvalidValue
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDeviceGetAttribute hipDeviceGetAttribute
#define cudaDevAttrClockRate hipDeviceAttributeClockRate

namespace hetmoe::gpu {
using bf16 = hip_bfloat16;
__device__ __forceinline__ float to_float(bf16 v) {
  return static_cast<float>(v);
}
__device__ __forceinline__ void from_float(float v, bf16* out) {
  *out = bf16(v);
}
}  // namespace hetmoe::gpu

#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cassert>

#if defined(NDEBUG)
// glibc's assert.h declares it only without NDEBUG; nvcc defines it for device code (the
// declaration LibTorch's c10/macros/Macros.h makes for CUDA_KERNEL_ASSERT).
extern "C" {
#if defined(__CUDA_ARCH__)
__host__ __device__
#endif
    void
    __assert_fail(const char* assertion, const char* file, unsigned int line,
                  const char* function) noexcept __attribute__((__noreturn__));
}
#endif

namespace hetmoe::gpu {
using bf16 = __nv_bfloat16;
__device__ __forceinline__ float to_float(bf16 v) {
  return __bfloat162float(v);
}
__device__ __forceinline__ void from_float(float v, bf16* out) {
  *out = __float2bfloat16(v);
}
}  // namespace hetmoe::gpu
#endif

// A device-side check that stays on in release builds (assert() is compiled out under NDEBUG).
// A failing thread prints the condition with its file and line and traps: the kernel stops, and
// the next call that waits for the stream fails (CUDA: "device-side assert triggered", after
// which the context is unusable, as after LibTorch's own index checks). Nothing waits for the
// host: the cost is a compare. glibc's __assert_fail, which both nvcc and hipcc provide in device
// code, is what their assert() calls.
#define HETMOE_DEVICE_CHECK(cond) \
  ((cond) ? static_cast<void>(0) : __assert_fail(#cond, __FILE__, __LINE__, __func__))

namespace hetmoe::gpu {
__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ void from_float(float v, float* out) {
  *out = v;
}

// Launch-error status as the plain int the launchers return (0 = success).
inline int last_error() {
  return static_cast<int>(cudaGetLastError());
}
inline cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}
inline int blocks_for(int64_t work, int threads, int64_t cap = 65535) {
  const int64_t b = (work + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > cap ? cap : b));
}
}  // namespace hetmoe::gpu
