// Helpers shared by the tensor tests: relative error and seeded random inputs.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace hetmoe::test_support {

// ||a - b|| / max(||b||, tiny), computed in double.
inline double rel_error(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor ad = a.detach().to(at::kCPU).to(at::kDouble);
  at::Tensor bd = b.detach().to(at::kCPU).to(at::kDouble);
  const double denom = std::max(bd.norm().item<double>(), 1e-30);
  return (ad - bd).norm().item<double>() / denom;
}

#define EXPECT_CLOSE(a, b, tol)                                                    \
  do {                                                                             \
    ASSERT_EQ((a).sizes(), (b).sizes());                                           \
    EXPECT_LE(::hetmoe::test_support::rel_error((a), (b)), (tol)) << #a " vs " #b; \
  } while (0)

}  // namespace hetmoe::test_support
