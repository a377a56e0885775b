#include "hetmoe/core/host_memory.h"

#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__GLIBC__)
#include <dlfcn.h>
#include <malloc.h>
#endif

namespace hetmoe {
namespace {

// The thresholds this function sets, as a user sets them without code (mallopt(3), tunables(7)).
const char* threshold_in_environment() {
  if (const char* t = std::getenv("GLIBC_TUNABLES")) {
    for (const char* name : {"glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold",
                             "glibc.malloc.top_pad", "glibc.malloc.mmap_max"})
      if (std::strstr(t, name)) return "GLIBC_TUNABLES";
  }
  for (const char* name :
       {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"})
    if (std::getenv(name)) return name;
  return nullptr;
}

#if defined(__GLIBC__)
// Whether the malloc this process calls is glibc's own. jemalloc and tcmalloc (linked or
// preloaded) and the sanitizers interpose it; glibc's mallopt would still say yes to them.
bool malloc_is_glibc() {
  void* libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
  if (!libc) return false;
  const bool same = dlsym(RTLD_DEFAULT, "malloc") == dlsym(libc, "malloc");
  dlclose(libc);
  return same;
}
#endif

HostMallocStatus decide() {
  HostMallocStatus s;
  if (const char* v = std::getenv("HETMOE_HOST_MALLOC"); v && *v) {
    if (std::strcmp(v, "system") == 0) {
      s.detail = "left as the C library sets it (HETMOE_HOST_MALLOC=system)";
      return s;
    }
    if (std::strcmp(v, "keep") != 0) {
      s.error = std::string("HETMOE_HOST_MALLOC='") + v + "' is not 'keep' or 'system'";
      s.detail = "left as it is (" + s.error + ")";
      return s;
    }
  }
  if (const char* name = threshold_in_environment()) {
    s.detail = std::string("left as the environment sets it (") + name + ")";
    return s;
  }
#if defined(__GLIBC__)
  if (!malloc_is_glibc()) {
    s.detail = "left as it is (malloc is not glibc's: jemalloc, tcmalloc or a sanitizer?)";
    return s;
  }
  // mallopt takes an int, so 2 GiB - 1 is the largest threshold it can set. Older glibc caps the
  // mmap threshold at 32 MiB (HEAP_MAX_SIZE / 2); take that where the larger is refused.
  int mmap_threshold = INT_MAX;
  if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1) {
    mmap_threshold = 32 << 20;
    if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1) {
      s.detail = "left as it is (mallopt refused M_MMAP_THRESHOLD)";
      return s;
    }
  }
  mallopt(M_TRIM_THRESHOLD, INT_MAX);  // glibc takes any trim threshold
  s.tuned = true;
  s.detail = "keeps freed memory: main-heap blocks below " +
             std::to_string((static_cast<long long>(mmap_threshold) + 1) >> 20) +
             " MiB, no trimming";
#else
  s.detail = "left as it is (not glibc)";
#endif
  return s;
}

std::mutex last_mutex;
HostMallocStatus last{false, "not set by hetmoe", ""};

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
