// `hetmoe plan`: what a config costs before it runs. Parameters (total, active per token and per
// rank), training FLOPs per token, memory per rank for a data x expert grid, and the time and cost
// of 1T training tokens on each device of a catalog at a given MFU.
#pragma once

#include <cstdint>
#include <string>

#include "hetmoe/bench/catalog.h"
#include "hetmoe/config/config.h"
#include "hetmoe/model/transformer.h"

namespace hetmoe {

// The process grid of a plan: world = data x expert ranks, as `mpirun -np` would launch it.
struct PlanGrid {
  int64_t data = 1;
  int64_t expert = 1;
  int64_t world() const { return data * expert; }
};

// Parses "dp=2,ep=4"; a part left out keeps its value in `defaults` (the config's grid, say).
// Throws hetmoe::Error("[plan] ...") naming the text on anything else, a part given twice too.
PlanGrid parse_grid(const std::string& text, const PlanGrid& defaults = {});

// Bytes one rank holds during training. Weights, gradients and optimizer state are exact for
// hetmoe's layout (fp32 master weights, fp32 gradients, AdamW's two fp32 moments); activations are
// an estimate of what autograd keeps for one micro-batch (see docs/benchmarks.md).
struct MemoryPlan {
  int64_t weights = 0;          // fp32 master weights
  int64_t compute_weights = 0;  // bf16 copies made for the forward pass (0 in fp32)
  int64_t gradients = 0;
  int64_t optimizer = 0;
  int64_t activations = 0;
  int64_t total() const { return weights + compute_weights + gradients + optimizer + activations; }
};

struct TrainingPlan {
  ParameterCount parameters;        // of the whole model
  int64_t expert_parameters = 0;    // routed-expert weights of the whole model
  int64_t parameters_per_rank = 0;  // shared parameters + this rank's expert shard
  int64_t experts_per_rank = 0;     // routed experts per MoE layer on one rank
  int64_t tokens_per_rank = 0;      // tokens of one micro-batch on one rank
  double flops_per_token = 0;       // training (forward + backward) FLOPs per token
  std::string dtype;                // compute dtype: fp32 | bf16
  PlanGrid grid;
  MemoryPlan memory;  // per rank
};

// Throws hetmoe::Error naming the values when the grid does not fit the config: expert
// parallelism that does not divide moe.num_experts, or a global train.micro_batch that does not
// split evenly over the ranks.
TrainingPlan plan_training(const Config& config, PlanGrid grid, const std::string& dtype);

// Training `tokens` tokens on one catalog device type at `mfu` (model FLOP/s over the device's
// dense peak in the plan's dtype).
struct DeviceEstimate {
  double peak_tflops = 0;  // 0: the catalog has no peak for this dtype (then nothing below)
  double mfu = 0;
  double device_hours = 0;  // summed over devices
  double wall_hours = 0;    // on plan.grid.world() devices
  double cost = 0;          // device_hours x price_per_hour, in the device's currency
  bool fits = false;        // the plan's memory per rank fits in the device's memory
};
DeviceEstimate estimate_on(const TrainingPlan& plan, const CatalogDevice& device, double mfu,
                           double tokens = 1e12);

}  // namespace hetmoe
