#include "hetmoe/core/host_memory.h"

#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace hetmoe {
namespace {

// The variables by which a user sets glibc's malloc without code (mallopt(3), tunables(7)).
const char* malloc_setting_in_environment() {
  if (const char* t = std::getenv("GLIBC_TUNABLES"); t && std::strstr(t, "glibc.malloc."))
    return "GLIBC_TUNABLES";
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                           "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX"})
    if (std::getenv(name)) return name;
  return nullptr;
}

HostMallocStatus decide() {
  HostMallocStatus s;
  if (const char* v = std::getenv("HETMOE_HOST_MALLOC"); v && std::strcmp(v, "system") == 0) {
    s.detail = "left as the C library sets it (HETMOE_HOST_MALLOC=system)";
    return s;
  }
  if (const char* name = malloc_setting_in_environment()) {
    s.detail = std::string("left as the environment sets it (") + name + ")";
    return s;
  }
#if defined(__GLIBC__)
  // mallopt takes an int, so 2 GiB - 1 is the largest threshold it can set. Older glibc caps the
  // mmap threshold at 32 MiB (HEAP_MAX_SIZE / 2); take that where the larger one is refused.
  int mmap_threshold = INT_MAX;
  if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1) {
    mmap_threshold = 32 << 20;
    if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1) {
      s.detail = "left as it is (mallopt refused M_MMAP_THRESHOLD: another allocator?)";
      return s;
    }
  }
  if (mallopt(M_TRIM_THRESHOLD, INT_MAX) != 1) {
    s.detail = "left as it is (mallopt refused M_TRIM_THRESHOLD: another allocator?)";
    return s;
  }
  s.tuned = true;
  s.detail = "keeps freed memory: blocks below " + std::to_string(mmap_threshold >> 20) +
             " MiB from the heap, no trimming";
#else
  s.detail = "left as it is (not glibc)";
#endif
  return s;
}

std::mutex last_mutex;
HostMallocStatus last{false, "not set by hetmoe"};

}  // namespace

HostMallocStatus keep_freed_host_memory() {
  HostMallocStatus s = decide();
  std::lock_guard<std::mutex> lock(last_mutex);
  last = s;
  return s;
}

HostMallocStatus host_malloc_status() {
  std::lock_guard<std::mutex> lock(last_mutex);
  return last;
}

}  // namespace hetmoe
