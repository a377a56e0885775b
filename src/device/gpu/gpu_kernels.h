// The GPU backend glue, one source for CUDA and ROCm: compiled once per vendor, against that
// vendor's LibTorch, with HETMOE_GPU_VENDOR_HIP set for ROCm. It uses only LibTorch's
// device-generic API (a ROCm LibTorch reports its GPUs as CUDA-type devices) and reaches the
// vendor runtime only through kernels/gpu, which nvcc and hipcc both compile.
#pragma once

#include <c10/core/Device.h>

#include "device/gpu_specs.h"
#include "hetmoe/device/kernels.h"

namespace hetmoe {

#if defined(HETMOE_GPU_VENDOR_HIP)
constexpr BackendKind kGpuBackendKind = BackendKind::ROCm;
#else
constexpr BackendKind kGpuBackendKind = BackendKind::CUDA;
#endif

// LibTorch's device type for this vendor's GPUs: CUDA for both.
constexpr c10::DeviceType kGpuDeviceType = c10::DeviceType::CUDA;

// The identity of GPU `index` as the vendor runtime reports it (queried once per process).
const GpuIdentity& gpu_identity(int index);

const MoEKernels& gpu_moe_kernels();

}  // namespace hetmoe
