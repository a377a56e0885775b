// The host allocator's settings for training. glibc's malloc gives a large block its own mapping
// (above a threshold that starts at 128 KiB and grows to at most 32 MiB as such blocks are freed)
// and hands the top of its heap back to the kernel when enough of it is free. A training step
// frees and reallocates the same activation- and gradient-sized blocks every step, so with those
// defaults each step pays a page fault for every 4 KiB of them at the first write: on the 2-core
// CI machine that was a sixth of a bench-small step (docs/performance.md).
#pragma once

#include <string>

namespace hetmoe {

struct HostMallocStatus {
  bool tuned = false;  // malloc now keeps freed memory for reuse
  std::string detail;  // what was set, or why nothing was
};

// Makes glibc's malloc keep freed memory in its heap for reuse: blocks up to 2 GiB come from the
// heap instead of mappings of their own, and the heap is not trimmed. The resident size then stays
// near the peak instead of shrinking between steps; the peak itself does not grow.
// Does nothing when HETMOE_HOST_MALLOC=system, when the environment already sets glibc's malloc
// (GLIBC_TUNABLES with glibc.malloc.*, or a MALLOC_*_ variable), when another allocator replaced
// malloc (mallopt refuses), and where the C library is not glibc. Safe to call more than once;
// best called first thing in main(), as the `hetmoe` command does. Libraries never call it.
HostMallocStatus keep_freed_host_memory();

// What the last keep_freed_host_memory() call did ("not set by hetmoe" before any).
HostMallocStatus host_malloc_status();

}  // namespace hetmoe
