// Device queries through the vendor runtime, so the backend glue needs no vendor header.
#include <cstdio>
#include <cstring>

#include "compat.h"
#include "moe_kernels.h"

namespace hetmoe::gpu {

int device_count(int* count) {
  *count = 0;
  const int rc = static_cast<int>(cudaGetDeviceCount(count));
  if (rc != 0) *count = 0;
  return rc;
}

bool is_no_device(int code) {
  return code == static_cast<int>(cudaErrorNoDevice);
}

int device_props(int device, DeviceProps* out) {
  cudaDeviceProp p;
  int rc = static_cast<int>(cudaGetDeviceProperties(&p, device));
  if (rc != 0) return rc;
  std::memset(out, 0, sizeof(*out));
  std::strncpy(out->name, p.name, sizeof(out->name) - 1);
#if defined(__HIPCC__)
  std::strncpy(out->arch, p.gcnArchName, sizeof(out->arch) - 1);
#else
  std::snprintf(out->arch, sizeof(out->arch), "sm_%d%d", p.major, p.minor);
#endif
  out->major = p.major;
  out->minor = p.minor;
  out->multiprocessors = p.multiProcessorCount;
  out->memory_bytes = static_cast<int64_t>(p.totalGlobalMem);
  out->l2_bytes = p.l2CacheSize;
  // The clock left cudaDeviceProp in CUDA 13; the attribute works on every version and vendor.
  return static_cast<int>(cudaDeviceGetAttribute(&out->clock_khz, cudaDevAttrClockRate, device));
}

}  // namespace hetmoe::gpu
