// AdamW with decoupled weight decay (none on 1-D parameters: norms and biases), fp32 state.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace hetmoe {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  // One multi-tensor kernel per parameter group (at::_fused_adamw_) instead of a few ATen ops per
  // parameter; false selects the plain per-parameter reference the fused path is tested against.
  bool fused = true;
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, at::Tensor>> named_parameters, AdamWOptions options);

  // One update with learning rate `lr` from the parameters' .grad(); parameters that never had
  // a gradient are left alone.
  void step(double lr);
  // Drops the gradients (PyTorch's set_to_none): the next backward's gradient becomes .grad()
  // as it is, instead of being added to a buffer of zeros, which saves a fill and an add per
  // parameter per step. step() still treats a parameter that has had a gradient before and got
  // none this time as having a zero gradient (decay and momentum go on), and leaves one that
  // never had a gradient alone.
  void zero_grad();
  int64_t steps_taken() const { return steps_; }

  // State for checkpoints: "exp_avg/<name>", "exp_avg_sq/<name>" and "step" (int64 scalar).
  std::map<std::string, at::Tensor> state_dict() const;
  // Throws hetmoe::Error("[optimizer] ...") naming a missing or mis-shaped entry.
  void load_state_dict(const std::map<std::string, at::Tensor>& state);

 private:
  struct Slot {
    std::string name;
    at::Tensor param, exp_avg, exp_avg_sq;
    bool decay;
    bool had_grad = false;  // some backward has reached the parameter
  };
  // The gradient step() uses: .grad(), or zeros once the parameter has had one (undefined else).
  static at::Tensor gradient_of(Slot& s);
  void step_reference(double lr);
  void step_fused(double lr);
  std::vector<Slot> slots_;
  AdamWOptions options_;
  int64_t steps_ = 0;
};

// Scales all gradients so that their global L2 norm is at most max_norm (when max_norm > 0);
// returns the norm before clipping.
double clip_grad_norm(const std::vector<at::Tensor>& parameters, double max_norm);

}  // namespace hetmoe
