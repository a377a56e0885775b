// The host allocator's settings for training. glibc's malloc gives a large block its own mapping
// (above a threshold that starts at 128 KiB and grows to at most 32 MiB as such blocks are freed)
// and hands the top of its heap back to the kernel when enough of it is free. A training step
// frees and reallocates the same activation- and gradient-sized blocks every step, so with those
// defaults each step pays a page fault for every 4 KiB of them at the first write: on the 2-core
// CI machine that was a sixth of a bench-small step (docs/architecture.md, "Decisions").
#pragma once

#include <string>

namespace hetmoe {

struct HostMallocStatus {
  bool tuned = false;  // malloc now keeps freed memory for reuse
  std::string detail;  // what was set, or why nothing was
  std::string error;   // non-empty: HETMOE_HOST_MALLOC has a value that means nothing
};

// Makes glibc's malloc keep freed memory for reuse: the main heap serves blocks up to 2 GiB
// instead of giving them mappings of their own, and is never trimmed. Threads other than the
// main one allocate from arenas of at most 64 MiB heaps, so their larger blocks are still mapped
// apiece. The resident size then stays near its high-water mark instead of shrinking between
// steps; heap blocks can fragment where mappings cannot, so the mark may end up a little higher
// (bench-small: within 1%).
// HETMOE_HOST_MALLOC=system (or a malloc threshold set in the environment: MALLOC_MMAP_THRESHOLD_,
// MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, MALLOC_MMAP_MAX_ or the same glibc.malloc.* names in
// GLIBC_TUNABLES) leaves malloc alone, as does an allocator that replaced glibc's (jemalloc,
// tcmalloc, a sanitizer) or a C library that is not glibc. Any other HETMOE_HOST_MALLOC value
// than "keep" or "system" is an error, returned in `error` with nothing changed.
// Safe to call more than once; best called first thing in main(), as the `hetmoe` command does.
// Libraries never call it.
HostMallocStatus keep_freed_host_memory();

// What the last keep_freed_host_memory() call did ("not set by hetmoe" before any).
HostMallocStatus host_malloc_status();

}  // namespace hetmoe
