// The GPU backend (CUDA, or ROCm when compiled with HETMOE_GPU_VENDOR_HIP): device information
// (name, memory, architecture, peak FLOP/s from device/gpu_specs) and the MoE kernel table.
// Compiled when the LibTorch in use is a GPU build; CI machines compile and link the CUDA one, a
// GPU machine runs it.
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <string>
#include <vector>

#include "device/gpu/gpu_kernels.h"
#include "hetmoe/core/error.h"
#include "hetmoe/device/registry.h"
#include "kernels/gpu/moe_kernels.h"

namespace hetmoe {
namespace {

std::vector<GpuIdentity> query_identities() {
  std::vector<GpuIdentity> out;
  int n = 0;
  gpu::device_count(&n);
  for (int i = 0; i < n; ++i) {
    gpu::DeviceProps p;
    const int rc = gpu::device_props(i, &p);
    HETMOE_CHECK(rc == 0, "device", "cannot read the properties of ", to_string(kGpuBackendKind),
                 " device ", i, ": ", gpu::error_string(rc));
    GpuIdentity id;
    id.kind = kGpuBackendKind;
    id.name = p.name;
    id.arch = p.arch;
    id.major = p.major;
    id.minor = p.minor;
    id.multiprocessors = p.multiprocessors;
    id.clock_khz = p.clock_khz;
    id.memory_bytes = p.memory_bytes;
    id.l2_bytes = p.l2_bytes;
    out.push_back(std::move(id));
  }
  return out;
}

const std::vector<GpuIdentity>& identities() {
  static const std::vector<GpuIdentity> all = query_identities();
  return all;
}

class GpuBackend final : public Backend {
 public:
  BackendKind kind() const override { return kGpuBackendKind; }
  bool available() const override { return !identities().empty(); }
  c10::Device torch_device(int index) const override {
    return c10::Device(kGpuDeviceType, static_cast<c10::DeviceIndex>(index));
  }
  void synchronize(int index) const override {
    c10::impl::getDeviceGuardImpl(kGpuDeviceType)
        ->synchronizeDevice(static_cast<c10::DeviceIndex>(index));
  }
  const MoEKernels& kernels() const override { return gpu_moe_kernels(); }
  int64_t peak_memory_bytes(int index) const override {
    const auto stats = c10::getDeviceAllocator(kGpuDeviceType)
                           ->getDeviceStats(static_cast<c10::DeviceIndex>(index));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
        .peak;
  }

  std::vector<DeviceInfo> devices() const override {
    std::vector<DeviceInfo> out;
    for (size_t i = 0; i < identities().size(); ++i) {
      const GpuIdentity& id = identities()[i];
      DeviceInfo d;
      d.kind = kGpuBackendKind;
      d.index = static_cast<int>(i);
      d.name = id.name;
      d.memory_bytes = id.memory_bytes;
      if (kGpuBackendKind == BackendKind::ROCm) {
        d.details["gfx_arch"] = id.arch;
        d.details["compute_units"] = std::to_string(id.multiprocessors);
      } else {
        d.details["compute_capability"] = std::to_string(id.major) + "." + std::to_string(id.minor);
        d.details["multiprocessors"] = std::to_string(id.multiprocessors);
      }
      d.details["clock_mhz"] = std::to_string(id.clock_khz / 1000);
      d.details["l2_bytes"] = std::to_string(id.l2_bytes);
      const GpuPeak peak = gpu_peak(id);
      d.peak_fp32_flops = peak.fp32_flops;
      d.peak_bf16_flops = peak.bf16_flops;
      if (!peak.source.empty()) d.details["peak_source"] = peak.source;
      out.push_back(std::move(d));
    }
    return out;
  }
};

}  // namespace

const GpuIdentity& gpu_identity(int index) {
  const auto& all = identities();
  HETMOE_CHECK(index >= 0 && index < static_cast<int>(all.size()), "device", "no ",
               to_string(kGpuBackendKind), " device ", index, " (", all.size(), " visible)");
  return all[static_cast<size_t>(index)];
}

#if defined(HETMOE_GPU_VENDOR_HIP)
std::unique_ptr<Backend> make_rocm_backend() {
  return std::make_unique<GpuBackend>();
}
#else
std::unique_ptr<Backend> make_cuda_backend() {
  return std::make_unique<GpuBackend>();
}
#endif

}  // namespace hetmoe
