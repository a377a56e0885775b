// `hetmoe check`: numerical alignment between two ways of running the same training, as the Ling
// team had to establish by hand when they moved between accelerators. Both sides start from the
// same initial weights and read the same batches; the check compares
//   - each operator on the first batch (norm, attention, router, permute, experts, unpermute):
//     outputs and input gradients from identical inputs, as norm-wise relative differences;
//   - the training loss step by step, and where it first drifts past a tolerance.
// Sides differ in backend (cpu vs cuda), compute dtype (fp32 vs bf16) or kernel implementation
// (the optimised kernels vs the naive reference path).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "hetmoe/config/config.h"
#include "hetmoe/ops/moe_ops.h"

namespace hetmoe {

struct CheckSide {
  std::string device = "cpu";  // a backend.device value: cpu | cuda | cuda:1 | rocm ...
  std::string dtype = "fp32";  // fp32 | bf16
  ops::KernelImpl kernels = ops::KernelImpl::Native;
  // "cpu fp32 native"
  std::string label() const;
};

struct CheckOptions {
  int64_t steps = 20;          // training steps on each side
  double tolerance = 1e-3;     // largest relative loss difference |a - b| / |a| allowed
  double op_tolerance = 1e-4;  // largest norm-wise relative operator difference allowed
  // Losses are compared as moving means over this many steps (1: step by step). A router
  // near-tie that flips under a different summation order moves one step's loss by more than
  // the operators ever differ; a window compares the curves instead of single draws.
  int64_t loss_window = 1;
  // One line per finished stage, e.g. "cpu fp32 native: step 10/20 loss 4.1234".
  std::function<void(const std::string&)> progress;
};

struct OpDifference {
  std::string op;      // norm | attention | router | permute | experts | unpermute
  std::string tensor;  // "output", "grad input", "grad w13", ...
  double max_abs = 0;
  double relative = 0;  // ||a - b|| / ||a||
  bool within = true;   // relative <= op_tolerance
};

struct CheckReport {
  std::string a, b;  // side labels
  std::vector<OpDifference> ops;
  double router_agreement = 1;         // fraction of routing choices that agree on the first batch
  std::vector<double> loss_a, loss_b;  // per step
  std::vector<double> relative;        // per step: |A - B| / |A| of the losses' moving means
  int64_t first_step_over = 0;         // first step (1-based) beyond the tolerance; 0: none
  double max_relative = 0;             // largest value of `relative`
  bool ops_within = true;              // every operator difference within op_tolerance
  bool passed() const { return first_step_over == 0 && ops_within; }
};

// Fills report.relative, first_step_over and max_relative from loss_a and loss_b: at step s the
// means of the last `window` losses (fewer at the start) are compared. Throws on window < 1.
void compare_losses(CheckReport& report, double tolerance, int64_t window);

// Runs both sides (one after the other, each in its own temporary run directory) and compares
// them. Throws hetmoe::Error when a side cannot run (device missing, bad config, no data).
CheckReport check_alignment(const Config& config, const CheckSide& a, const CheckSide& b,
                            const CheckOptions& options = {});

}  // namespace hetmoe
