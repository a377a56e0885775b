#include "hetmoe/train/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <set>

#include "hetmoe/core/error.h"

namespace hetmoe {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> named_parameters, AdamWOptions options)
    : options_(options) {
  for (auto& [name, p] : named_parameters) {
    HETMOE_CHECK(p.scalar_type() == at::kFloat, "optimizer", "parameter '", name,
                 "' is not fp32 (master weights must be fp32)");
    slots_.push_back(Slot{name, p, at::zeros_like(p), at::zeros_like(p), p.dim() >= 2});
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  if (options_.fused)
    step_fused(lr);
  else
    step_reference(lr);
}

at::Tensor AdamW::gradient_of(Slot& s) {
  const at::Tensor& g = s.param.grad();
  if (g.defined()) {
    s.had_grad = true;
    return g;
  }
  return s.had_grad ? at::zeros_like(s.param) : at::Tensor();
}

void AdamW::step_fused(double lr) {
  for (const bool decay : {true, false}) {
    std::vector<at::Tensor> params, grads, avgs, avg_sqs, steps;
    for (Slot& s : slots_) {
      if (s.decay != decay) continue;
      at::Tensor g = gradient_of(s);
      if (!g.defined()) continue;
      params.push_back(s.param);
      grads.push_back(g);
      avgs.push_back(s.exp_avg);
      avg_sqs.push_back(s.exp_avg_sq);
      // The kernel reads the step count (already incremented) from a tensor per parameter.
      steps.push_back(at::full({}, static_cast<double>(steps_), s.param.options()));
    }
    if (params.empty()) continue;
    at::_fused_adamw_(params, grads, avgs, avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr,
                      options_.beta1, options_.beta2, decay ? options_.weight_decay : 0.0,
                      options_.eps, /*amsgrad=*/false, /*maximize=*/false);
    // The fused kernel leaves the version counters as they were; bumped, they tell a
    // WeightCastScope to recast and autograd that a graph saved before the step is stale, as
    // after any other in-place update.
    for (const at::Tensor& p : params) p.unsafeGetTensorImpl()->bump_version();
  }
}

void AdamW::step_reference(double lr) {
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(steps_));
  for (Slot& s : slots_) {
    const at::Tensor g = gradient_of(s);
    if (!g.defined()) continue;
    if (s.decay && options_.weight_decay > 0) s.param.mul_(1.0 - lr * options_.weight_decay);
    s.exp_avg.mul_(b1).add_(g, 1.0 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
    at::Tensor denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(options_.eps);
    s.param.addcdiv_(s.exp_avg, denom, -lr / bc1);
  }
}

void AdamW::zero_grad() {
  for (Slot& s : slots_) s.param.mutable_grad().reset();
}

std::map<std::string, at::Tensor> AdamW::state_dict() const {
  std::map<std::string, at::Tensor> out;
  for (const Slot& s : slots_) {
    out["exp_avg/" + s.name] = s.exp_avg;
    out["exp_avg_sq/" + s.name] = s.exp_avg_sq;
  }
  out["step"] = at::scalar_tensor(steps_, at::kLong);
  return out;
}

void AdamW::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  auto get = [&](const std::string& key, const at::Tensor& like) {
    auto it = state.find(key);
    HETMOE_CHECK(it != state.end(), "optimizer", "checkpoint has no optimizer entry '", key, "'");
    HETMOE_CHECK(it->second.sizes() == like.sizes(), "optimizer", "optimizer entry '", key,
                 "' has shape ", it->second.sizes(), ", the model needs ", like.sizes());
    return it->second;
  };
  // Every check before any copy; an entry for a parameter this model lacks is refused too.
  std::set<std::string> known{"step"};
  for (const Slot& s : slots_) {
    get("exp_avg/" + s.name, s.exp_avg);
    get("exp_avg_sq/" + s.name, s.exp_avg_sq);
    known.insert("exp_avg/" + s.name);
    known.insert("exp_avg_sq/" + s.name);
  }
  for (const auto& [key, t] : state)
    HETMOE_CHECK(known.count(key) != 0, "optimizer", "checkpoint has optimizer entry '", key,
                 "' for a parameter this model does not have");
  auto it = state.find("step");
  HETMOE_CHECK(it != state.end(), "optimizer", "checkpoint has no optimizer entry 'step'");
  at::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    s.exp_avg.copy_(state.at("exp_avg/" + s.name));
    s.exp_avg_sq.copy_(state.at("exp_avg_sq/" + s.name));
  }
  steps_ = it->second.item<int64_t>();
}

double clip_grad_norm(const std::vector<at::Tensor>& parameters, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : parameters)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;
  // Multi-tensor kernels: one launch for all norms and one for the scaling.
  const double total =
      at::stack(at::_foreach_norm(grads, 2)).to(at::kDouble).norm(2).item<double>();
  if (max_norm > 0 && total > max_norm && std::isfinite(total))
    at::_foreach_mul_(grads, max_norm / (total + 1e-6));
  return total;
}

}  // namespace hetmoe
