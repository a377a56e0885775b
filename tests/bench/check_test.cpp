// `hetmoe check`: the optimised CPU kernels agree with the naive reference path operator by
// operator and loss by loss; a real difference (fp32 vs bf16) is caught at a tight tolerance,
// with the first step beyond it.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "hetmoe/bench/check.h"
#include "hetmoe/core/error.h"
#include "support/train_fixture.h"

namespace hetmoe {
namespace {

using test_support::TempDir;

class CheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test_support::prepare_corpus(dir_);
    config_ = test_support::tiny_config(dir_);
    config_.moe.routing_warmup_steps = 2;  // the noise must be the same on both sides too
  }
  CheckSide side(const std::string& dtype, ops::KernelImpl k) const {
    CheckSide s;
    s.dtype = dtype;
    s.kernels = k;
    return s;
  }
  TempDir dir_;
  Config config_;
};

TEST_F(CheckTest, OptimisedKernelsAgreeWithTheReferencePath) {
  CheckOptions o;
  o.steps = 4;
  o.tolerance = 1e-4;
  o.op_tolerance = 1e-5;
  const CheckReport r = check_alignment(config_, side("fp32", ops::KernelImpl::Native),
                                        side("fp32", ops::KernelImpl::Reference), o);
  EXPECT_EQ(r.a, "cpu fp32 native");
  EXPECT_EQ(r.b, "cpu fp32 reference");
  ASSERT_EQ(r.loss_a.size(), 4u);
  ASSERT_EQ(r.loss_b.size(), 4u);
  EXPECT_LT(r.loss_a.back(), r.loss_a.front()) << "the model trains";
  EXPECT_TRUE(r.passed()) << "max relative loss difference " << r.max_relative;
  EXPECT_EQ(r.router_agreement, 1.0);
  std::set<std::string> ops;
  for (const OpDifference& d : r.ops) {
    ops.insert(d.op);
    EXPECT_TRUE(d.within) << d.op << " " << d.tensor << " " << d.relative;
  }
  EXPECT_EQ(ops, (std::set<std::string>{"norm", "attention", "router", "permute", "experts",
                                        "unpermute"}));
}

TEST_F(CheckTest, Bf16AgainstFp32IsCaughtAtATightTolerance) {
  CheckOptions o;
  o.steps = 2;
  o.tolerance = 1e-7;
  o.op_tolerance = 1e-7;
  const CheckReport r = check_alignment(config_, side("fp32", ops::KernelImpl::Native),
                                        side("bf16", ops::KernelImpl::Native), o);
  EXPECT_FALSE(r.passed());
  EXPECT_EQ(r.first_step_over, 1);
  EXPECT_FALSE(r.ops_within);
  EXPECT_GT(r.max_relative, 1e-5);
  // ... and within bf16's own precision at a bf16 tolerance.
  o.tolerance = 3e-2;
  o.op_tolerance = 5e-2;
  EXPECT_TRUE(check_alignment(config_, side("fp32", ops::KernelImpl::Native),
                              side("bf16", ops::KernelImpl::Native), o)
                  .passed());
}

TEST_F(CheckTest, TwoEqualSidesAreRefused) {
  EXPECT_THROW(check_alignment(config_, CheckSide{}, CheckSide{}), Error);
}

// One step that jumps (a router near-tie resolving differently) fails a step-by-step comparison
// and passes a windowed one whose mean absorbs it; a lasting drift fails both.
TEST(CompareLossesTest, AWindowComparesMovingMeans) {
  CheckReport r;
  r.loss_a = {4.0, 3.0, 2.0, 2.0, 2.0, 2.0};
  r.loss_b = {4.0, 3.0, 2.0, 2.01, 2.0, 2.0};  // 5e-3 off at step 4 only
  compare_losses(r, 1e-3, 1);
  EXPECT_EQ(r.first_step_over, 4);
  EXPECT_NEAR(r.max_relative, 5e-3, 1e-12);
  ASSERT_EQ(r.relative.size(), 6u);
  EXPECT_EQ(r.relative[2], 0.0);

  compare_losses(r, 2e-3, 4);  // at step 4 the means are 11/4 and 11.01/4: 9.1e-4
  EXPECT_EQ(r.first_step_over, 0);
  EXPECT_NEAR(r.relative[1], 0.0, 1e-15);          // a short window at the start
  EXPECT_NEAR(r.relative[3], 0.01 / 11.0, 1e-12);  // steps 1-4
  EXPECT_NEAR(r.relative[5], 0.01 / 8.0, 1e-12);   // steps 3-6
  EXPECT_NEAR(r.max_relative, 0.01 / 8.0, 1e-12);

  r.loss_b = {4.0, 3.0, 2.0, 2.01, 2.01, 2.01};  // a drift that stays
  compare_losses(r, 2e-3, 4);
  EXPECT_EQ(r.first_step_over, 5);  // steps 2-5: 9.02 against 9, 2.2e-3

  // A non-finite loss fails its own step (and the windows holding it), not every later one.
  r.loss_b = {4.0, 3.0, std::nan(""), 2.0, 2.0, 2.0};
  compare_losses(r, 1e-3, 2);
  EXPECT_EQ(r.first_step_over, 3);
  EXPECT_FALSE(std::isfinite(r.relative[3]));
  EXPECT_EQ(r.relative[4], 0.0);

  EXPECT_THROW(compare_losses(r, 1e-3, 0), Error);
  r.loss_b.pop_back();
  EXPECT_THROW(compare_losses(r, 1e-3, 1), Error);
}

}  // namespace
}  // namespace hetmoe
