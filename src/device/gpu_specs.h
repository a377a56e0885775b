// What hetmoe knows about a GPU from its identity alone, for both vendors: its peak FLOP/s (the
// MFU denominator; `hetmoe bench` measures the real ceilings next to it) and whether LibTorch's
// at::_grouped_mm runs natively on it. Plain C++: tested on machines without a GPU.
#pragma once

#include <cstdint>
#include <string>

#include "hetmoe/device/backend.h"

namespace hetmoe {

struct GpuIdentity {
  BackendKind kind = BackendKind::CUDA;
  std::string name;          // "NVIDIA H100 80GB HBM3", "AMD Instinct MI300X"
  std::string arch;          // "sm_90"; for ROCm the gcnArchName, "gfx942:sramecc+:xnack-"
  int major = 0, minor = 0;  // compute capability (ROCm reports an approximation)
  int multiprocessors = 0;   // SMs or compute units
  int clock_khz = 0;         // peak engine clock
  int64_t memory_bytes = 0;
  int64_t l2_bytes = 0;
};

struct GpuPeak {
  double fp32_flops = 0;  // per second, dense; 0 when unknown
  double bf16_flops = 0;
  std::string source;  // how the figure was found, for `hetmoe devices`
};

// NVIDIA: a datasheet table by compute capability (and name where SKUs differ). AMD: compute
// units x peak clock x the architecture's matrix FLOPs per CU per clock, which covers every SKU
// of an architecture, and counts each GCD of an MI250X as the device it is.
GpuPeak gpu_peak(const GpuIdentity& gpu);

// The gfx target without its feature flags: "gfx90a:sramecc+:xnack-" -> "gfx90a".
std::string gfx_target(const std::string& arch);

// True where at::_grouped_mm is a native grouped kernel for bf16: CUTLASS on sm_90 and sm_100.
// Never on ROCm: LibTorch 2.11's Composable Kernel path (gfx90a/942/950, opt-in with
// ROCM_ALLOW_GROUP_GEMM_CK=1) builds each group's descriptor on the host from the offsets tensor,
// which hetmoe computes on the device just before, and otherwise its fallback copies the offsets
// to the host on every call. Until that is measured on an AMD GPU, ROCm keeps the backend's
// per-expert GEMM loop.
bool grouped_mm_native(const GpuIdentity& gpu);

// Whether at::_grouped_mm's 2-D x 2-D product (the weight gradients) writes zeros for a group of
// zero rows. True only where that is known: sm_90's CUTLASS kernel. sm_100 leaves the group
// unwritten (pytorch/pytorch#172439), and the rest is unverified, so the backend zero-fills there.
bool grouped_mm_writes_empty_groups(const GpuIdentity& gpu);

// at::_grouped_mm refuses 1024 groups or more (one thread per group in its setup kernel).
constexpr int64_t kGroupedMmMaxGroups = 1023;

// Whether at::_grouped_mm takes this expert FFN: 16-byte aligned bf16 rows (hidden and
// expert_hidden multiples of 8) and at most kGroupedMmMaxGroups local experts.
bool grouped_mm_fits(int64_t hidden, int64_t expert_hidden, int64_t experts);

}  // namespace hetmoe
