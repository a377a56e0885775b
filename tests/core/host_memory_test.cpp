#include "hetmoe/core/host_memory.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace hetmoe {
namespace {

// Sets (or, with nullptr, clears) one environment variable for the scope; restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_.c_str(), old_->c_str(), 1);
    else
      unsetenv(name_.c_str());
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// The environment as a user who set nothing has it.
std::vector<ScopedEnv> clean_malloc_environment() {
  std::vector<ScopedEnv> env;
  env.reserve(7);
  for (const char* name :
       {"HETMOE_HOST_MALLOC", "GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX"})
    env.emplace_back(name, nullptr);
  return env;
}

bool sanitized() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

TEST(HostMallocTest, LargeFreedBlocksStayInTheHeap) {
#if !defined(__GLIBC__) || !__GLIBC_PREREQ(2, 33)
  GTEST_SKIP() << "needs glibc >= 2.33 (mallinfo2)";
#else
  const auto env = clean_malloc_environment();
  const HostMallocStatus s = keep_freed_host_memory();
  EXPECT_TRUE(s.error.empty());
  if (sanitized()) {
    // The sanitizer's malloc replaced glibc's: glibc's settings would mean nothing.
    EXPECT_FALSE(s.tuned);
    EXPECT_NE(s.detail.find("not glibc's"), std::string::npos) << s.detail;
    return;
  }
  // (This changes malloc for the rest of the test process; ctest runs each test on its own.)
  ASSERT_TRUE(s.tuned) << s.detail;
  EXPECT_EQ(host_malloc_status().detail, s.detail);
  // glibc's default gives a block this large (above its 32 MiB ceiling for the mmap threshold) a
  // mapping of its own, which goes back to the kernel when freed and faults in again next time.
  const size_t bytes = size_t{64} << 20;
  const size_t mapped_before = mallinfo2().hblks;
  char* p = static_cast<char*>(std::malloc(bytes));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, bytes);
  const size_t mapped_during = mallinfo2().hblks;
  const size_t heap_during = mallinfo2().arena;
  std::free(p);
  EXPECT_EQ(mapped_during, mapped_before) << "the 64 MiB block got a mapping of its own";
  EXPECT_GE(heap_during, bytes) << "the 64 MiB block did not come from the heap";
  // Freed, it stays: the heap is not trimmed back.
  EXPECT_GE(mallinfo2().arena, heap_during);
#endif
}

TEST(HostMallocTest, LeavesMallocAloneWhenTheUserSaysSo) {
  auto env = clean_malloc_environment();
  {
    ScopedEnv opt_out("HETMOE_HOST_MALLOC", "system");
    const HostMallocStatus s = keep_freed_host_memory();
    EXPECT_FALSE(s.tuned);
    EXPECT_NE(s.detail.find("HETMOE_HOST_MALLOC=system"), std::string::npos) << s.detail;
    EXPECT_EQ(host_malloc_status().detail, s.detail);
  }
  {
    ScopedEnv tunables("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576");
    const HostMallocStatus s = keep_freed_host_memory();
    EXPECT_FALSE(s.tuned);
    EXPECT_NE(s.detail.find("GLIBC_TUNABLES"), std::string::npos) << s.detail;
  }
  {
    ScopedEnv typo("HETMOE_HOST_MALLOC", "sytem");
    const HostMallocStatus s = keep_freed_host_memory();
    EXPECT_FALSE(s.tuned);
    EXPECT_EQ(s.error, "HETMOE_HOST_MALLOC='sytem' is not 'keep' or 'system'");
  }
  {
    ScopedEnv threshold("MALLOC_MMAP_THRESHOLD_", "65536");
    const HostMallocStatus s = keep_freed_host_memory();
    EXPECT_FALSE(s.tuned);
    EXPECT_NE(s.detail.find("MALLOC_MMAP_THRESHOLD_"), std::string::npos) << s.detail;
  }
  {
    // Tunables for other parts of glibc, or malloc's other settings, do not stand in the way.
    ScopedEnv tunables("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.tcache_count=0");
    ScopedEnv arenas("MALLOC_ARENA_MAX", "2");
    const HostMallocStatus s = keep_freed_host_memory();
    EXPECT_EQ(s.detail.find("GLIBC_TUNABLES"), std::string::npos) << s.detail;
  }
}

}  // namespace
}  // namespace hetmoe
