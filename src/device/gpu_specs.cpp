#include "device/gpu_specs.h"

namespace hetmoe {
namespace {

struct NvidiaPeak {
  int major, minor;
  const char* name_contains;        // "" matches any name of that compute capability
  double fp32_tflops, bf16_tflops;  // dense, no sparsity
};

// Vendor datasheet peaks; the first entry that matches wins, so SKU-specific rows come first,
// and a name before any name it is part of (L40S, L40, L4).
// bf16 is the tensor-core rate with fp32 accumulation (half the fp16-accumulate rate on GeForce).
constexpr NvidiaPeak kNvidia[] = {
    {9, 0, "H100 PCIe", 51.2, 756.0},
    {9, 0, "H100 NVL", 60.0, 835.0},
    {9, 0, "H200", 66.9, 989.0},
    {9, 0, "", 66.9, 989.0},  // H100 SXM
    {8, 0, "", 19.5, 312.0},
    {8, 6, "A10", 31.2, 125.0},
    {8, 6, "A40", 37.4, 149.7},
    {8, 6, "A6000", 38.7, 154.8},
    {8, 6, "", 35.6, 71.0},  // RTX 3090
    {8, 9, "L40S", 91.6, 362.0},
    {8, 9, "L40", 90.5, 181.0},
    {8, 9, "L4", 30.3, 121.0},
    {8, 9, "RTX 4090", 82.6, 165.2},
    {8, 9, "", 91.6, 362.0},
    {10, 0, "", 80.0, 2250.0},
    {7, 0, "", 15.7, 0.0},
};

struct AmdRate {
  const char* target;
  double fp32, bf16;  // dense matrix FLOPs per compute unit per clock
};

// From AMD's datasheets: MI100 (gfx908), MI200 (gfx90a), MI300 (gfx942), MI350 (gfx950),
// RDNA3 (gfx1100). E.g. MI300X: 304 CUs x 2.1 GHz x 2048 = 1307 bf16 TFLOP/s.
constexpr AmdRate kAmd[] = {
    {"gfx908", 256, 512},  {"gfx90a", 256, 1024}, {"gfx942", 256, 2048},
    {"gfx950", 256, 4096}, {"gfx1100", 256, 512},
};

}  // namespace

std::string gfx_target(const std::string& arch) {
  return arch.substr(0, arch.find(':'));
}

GpuPeak gpu_peak(const GpuIdentity& gpu) {
  GpuPeak out;
  if (gpu.kind == BackendKind::ROCm) {
    const std::string target = gfx_target(gpu.arch);
    for (const AmdRate& r : kAmd) {
      if (target != r.target || gpu.multiprocessors <= 0 || gpu.clock_khz <= 0) continue;
      const double per_clock = static_cast<double>(gpu.multiprocessors) * gpu.clock_khz * 1e3;
      out.fp32_flops = per_clock * r.fp32;
      out.bf16_flops = per_clock * r.bf16;
      out.source = "compute units x peak clock x " + target + " matrix rate";
      break;
    }
    return out;
  }
  for (const NvidiaPeak& k : kNvidia) {
    if (k.major == gpu.major && k.minor == gpu.minor &&
        gpu.name.find(k.name_contains) != std::string::npos) {
      out.fp32_flops = k.fp32_tflops * 1e12;
      out.bf16_flops = k.bf16_tflops * 1e12;
      out.source = "datasheet table by compute capability";
      break;
    }
  }
  return out;
}

bool grouped_mm_native(const GpuIdentity& gpu) {
  if (gpu.kind == BackendKind::ROCm) return false;
  return gpu.major == 9 || gpu.major == 10;  // Hopper and datacenter Blackwell
}

bool grouped_mm_writes_empty_groups(const GpuIdentity& gpu) {
  return gpu.kind == BackendKind::CUDA && gpu.major == 9;
}

bool grouped_mm_fits(int64_t hidden, int64_t expert_hidden, int64_t experts) {
  return hidden % 8 == 0 && expert_hidden % 8 == 0 && experts <= kGroupedMmMaxGroups;
}

}  // namespace hetmoe
