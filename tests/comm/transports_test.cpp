// The transport choice's pure parts (the transports themselves run under mpirun: tests/mpi).
#include <gtest/gtest.h>

#include "comm/transports.h"

namespace hetmoe::comm_detail {
namespace {

TEST(SharedGpuTest, DistinctGpusAreNotShared) {
  EXPECT_FALSE(first_shared_gpu({}).has_value());
  EXPECT_FALSE(first_shared_gpu({"GPU-1b"}).has_value());
  EXPECT_FALSE(first_shared_gpu({"GPU-1b", "GPU-2c", "GPU-3d"}).has_value());
}

TEST(SharedGpuTest, NamesTheFirstTwoRanksOnOneGpu) {
  const auto shared = first_shared_gpu({"GPU-1b", "GPU-2c", "GPU-2c", "GPU-1b"});
  ASSERT_TRUE(shared.has_value());
  // Rank 3 repeats rank 0's GPU, but ranks 1 and 2 are the first pair found in rank order.
  EXPECT_EQ(shared->first, 1);
  EXPECT_EQ(shared->second, 2);
  const auto later = first_shared_gpu({"a 1", "b 1", "c 1", "a 1"});
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(later->first, 0);
  EXPECT_EQ(later->second, 3);
}

}  // namespace
}  // namespace hetmoe::comm_detail
