// Links the hipcc-built GPU kernels with the HIP runtime and asks it for devices: the part of a
// ROCm build that a machine without a ROCm LibTorch can still check. Exits 0 when the runtime
// answers (devices listed, or exactly "no device"), 1 on any other runtime error.
#include <cstdio>

#include "kernels/gpu/moe_kernels.h"

int main() {
  using namespace hetmoe::gpu;
  int count = -1;
  const int rc = device_count(&count);
  std::printf("HIP runtime: %d device(s) (%s)\n", count, error_string(rc));
  if (rc != 0 && !is_no_device(rc)) return 1;
  for (int i = 0; i < count; ++i) {
    DeviceProps p;
    const int prc = device_props(i, &p);
    if (prc != 0) {
      std::printf("device %d: %s\n", i, error_string(prc));
      return 1;
    }
    std::printf("device %d: %s (%s), %d compute units at %d MHz, %lld bytes\n", i, p.name, p.arch,
                p.multiprocessors, p.clock_khz / 1000, static_cast<long long>(p.memory_bytes));
  }
  return 0;
}
