// The device-abstraction layer: a Backend per kind of accelerator (CPU, CUDA, ROCm) reporting its
// devices and their ceilings, and owning the MoE kernel table the operators dispatch through.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "hetmoe/device/kernels.h"

namespace hetmoe {

enum class BackendKind { CPU, CUDA, ROCm };

std::string to_string(BackendKind kind);

struct DeviceInfo {
  BackendKind kind = BackendKind::CPU;
  int index = 0;
  std::string name;            // e.g. "NVIDIA H100 80GB HBM3", "Intel Xeon ... (2 cores)"
  int64_t memory_bytes = 0;    // device memory (host RAM for the CPU)
  double peak_fp32_flops = 0;  // per second; 0 when unknown
  double peak_bf16_flops = 0;  // per second; 0 when unknown
  std::map<std::string, std::string> details;  // ISA, BLAS, compute capability, ...
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  virtual std::string name() const { return to_string(kind()); }
  // True when the backend was built in and at least one device is usable now.
  virtual bool available() const = 0;
  // Built on each call and returned by value: keep the vector in a variable before
  // iterating a member of one of its elements (`for (auto& kv : b->devices()[0].details)`
  // iterates a destroyed temporary before C++23).
  virtual std::vector<DeviceInfo> devices() const = 0;
  // The LibTorch device for this backend's device `index`.
  virtual c10::Device torch_device(int index) const = 0;
  virtual void synchronize(int index) const = 0;
  // High-water mark of memory in use since the process started: resident memory for the CPU,
  // bytes held by LibTorch's caching allocator for a GPU. 0 when unknown.
  virtual int64_t peak_memory_bytes(int index) const = 0;
  virtual const MoEKernels& kernels() const = 0;
};

}  // namespace hetmoe
