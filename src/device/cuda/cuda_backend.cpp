// The CUDA backend: GPU information (name, memory, compute capability, peak FLOP/s from a table)
// and its MoE kernel table. Compiled only when HETMOE_WITH_CUDA resolves on; the CPU machines of CI
// compile and link it, the GPU machine runs it.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "device/cuda/cuda_kernels.h"
#include "hetmoe/device/registry.h"

namespace hetmoe {
namespace {

struct Peak {
  int major, minor;
  const char* name_contains;        // "" matches any name of that compute capability
  double fp32_tflops, bf16_tflops;  // dense, no sparsity
};

// Vendor datasheet peaks; `hetmoe bench` measures the real ceilings next to these.
constexpr Peak kPeaks[] = {
    {9, 0, "H100 PCIe", 51.2, 756.0}, {9, 0, "H200", 66.9, 989.0},
    {9, 0, "", 66.9, 989.0},          {8, 0, "", 19.5, 312.0},
    {8, 6, "A10", 31.2, 125.0},       {8, 6, "", 35.6, 71.0},
    {8, 9, "L4", 30.3, 121.0},        {8, 9, "", 91.6, 362.0},
    {10, 0, "", 80.0, 2250.0},        {7, 0, "", 15.7, 0.0},
};

class CudaBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::CUDA; }
  bool available() const override { return c10::cuda::device_count() > 0; }
  c10::Device torch_device(int index) const override {
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  void synchronize(int index) const override {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
    c10::cuda::device_synchronize();
  }
  const MoEKernels& kernels() const override { return cuda_moe_kernels(); }
  int64_t peak_memory_bytes(int index) const override {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
        .peak;
  }

  std::vector<DeviceInfo> devices() const override {
    std::vector<DeviceInfo> out;
    const int n = c10::cuda::device_count();
    for (int i = 0; i < n; ++i) {
      const cudaDeviceProp* p = at::cuda::getDeviceProperties(i);
      DeviceInfo d;
      d.kind = BackendKind::CUDA;
      d.index = i;
      d.name = p->name;
      d.memory_bytes = static_cast<int64_t>(p->totalGlobalMem);
      d.details["compute_capability"] = std::to_string(p->major) + "." + std::to_string(p->minor);
      d.details["multiprocessors"] = std::to_string(p->multiProcessorCount);
      d.details["l2_bytes"] = std::to_string(p->l2CacheSize);
      for (const Peak& k : kPeaks) {
        if (k.major == p->major && k.minor == p->minor &&
            d.name.find(k.name_contains) != std::string::npos) {
          d.peak_fp32_flops = k.fp32_tflops * 1e12;
          d.peak_bf16_flops = k.bf16_tflops * 1e12;
          d.details["peak_source"] = "datasheet table by compute capability";
          break;
        }
      }
      out.push_back(std::move(d));
    }
    return out;
  }
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() {
  return std::make_unique<CudaBackend>();
}

}  // namespace hetmoe
