#include "hetmoe/bench/plan.h"

#include <sstream>

#include "hetmoe/core/error.h"

namespace hetmoe {
namespace {

constexpr const char* kComponent = "plan";

// Bytes autograd keeps per token for one transformer block and for the head (see
// docs/benchmarks.md, "Memory"): the inputs each differentiable operation saves for its backward
// pass, in the compute dtype (b bytes) or fp32 where hetmoe computes in fp32 (norms, router,
// logits). Softmax attention keeps only its output and log-sum-exp (flash-style kernels).
struct ActivationModel {
  const ModelConfig& m;
  const MoEConfig& e;
  double b;  // compute dtype bytes

  // Its input in the compute dtype and the fp32 reciprocal RMS per token (its output is the
  // next layer's input, counted there).
  double norm() const { return b * m.d_model + 4.0; }
  double attention() const {
    const double kv = static_cast<double>(m.d_model) / m.n_heads * m.n_kv_heads;
    // x, q, k, v (before and after RoPE), the attention output, and 4-byte log-sum-exp per head.
    return b * (m.d_model + 2.0 * (m.d_model + 2 * kv) + m.d_model) + 4.0 * m.n_heads;
  }
  double dense_ffn() const { return b * (m.d_model + 3.0 * m.dense_ffn_hidden); }
  double moe() const {
    const double k = static_cast<double>(e.top_k), f = static_cast<double>(e.expert_hidden);
    const double d = static_cast<double>(m.d_model);
    const double router = 4.0 * d + 3 * 4.0 * e.num_experts;  // fp32 input, logits, scores
    const double routed = b * (k * d + 3.0 * k * f + k * d);  // permuted, h and act, y
    // The shared FFN's input (the norm's output), h and act.
    const double shared = e.num_shared_experts > 0 ? b * (d + 3.0 * e.num_shared_experts * f) : 0.0;
    return router + routed + shared + 8.0 * k;  // + row maps
  }
  double head() const { return norm() + b * m.d_model + 2 * 4.0 * m.vocab_size; }
  double per_token() const {
    const double block_moe = 2 * norm() + attention() + moe();
    const double block_dense = 2 * norm() + attention() + dense_ffn();
    return static_cast<double>(m.first_k_dense) * block_dense +
           static_cast<double>(m.n_layers - m.first_k_dense) * block_moe + head();
  }
};

int64_t parse_positive(const std::string& text, const std::string& part, const std::string& all) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(part, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  HETMOE_CHECK(used == part.size() && v >= 1, kComponent, "bad --grid '", all, "': '", text,
               "' needs a whole number >= 1");
  return v;
}

}  // namespace

PlanGrid parse_grid(const std::string& text, const PlanGrid& defaults) {
  PlanGrid g = defaults;
  std::stringstream in(text);
  std::string item;
  bool data = false, expert = false;  // seen
  while (std::getline(in, item, ',')) {
    const auto eq = item.find('=');
    HETMOE_CHECK(eq != std::string::npos, kComponent, "bad --grid '", text, "': '", item,
                 "' is not dp=N or ep=N");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    HETMOE_CHECK(key == "dp" || key == "ep", kComponent, "bad --grid '", text, "': unknown part '",
                 key, "' (known: dp, ep)");
    bool& seen = key == "dp" ? data : expert;
    HETMOE_CHECK(!seen, kComponent, "bad --grid '", text, "': '", key, "' is given twice");
    seen = true;
    (key == "dp" ? g.data : g.expert) = parse_positive(item, value, text);
  }
  HETMOE_CHECK(data || expert, kComponent, "bad --grid '", text, "': give dp=N and/or ep=N");
  return g;
}

TrainingPlan plan_training(const Config& config, PlanGrid grid, const std::string& dtype) {
  const ModelConfig& m = config.model;
  const MoEConfig& e = config.moe;
  HETMOE_CHECK(dtype == "fp32" || dtype == "bf16", kComponent, "unknown dtype '", dtype,
               "' (known: fp32, bf16)");
  HETMOE_CHECK(grid.data >= 1 && grid.expert >= 1, kComponent, "grid sizes must be >= 1");
  HETMOE_CHECK(e.num_experts % grid.expert == 0, kComponent, "expert parallelism ep=", grid.expert,
               " does not divide moe.num_experts ", e.num_experts);
  HETMOE_CHECK(config.train.micro_batch % grid.world() == 0, kComponent, "train.micro_batch ",
               config.train.micro_batch,
               " is the global micro-batch and does not split evenly over ", grid.world(),
               " ranks (dp=", grid.data, " x ep=", grid.expert, ")");
  TrainingPlan p;
  p.dtype = dtype;
  p.grid = grid;
  p.parameters = count_parameters(m, e);
  const int64_t moe_layers = m.n_layers - m.first_k_dense;
  const int64_t per_expert = 3 * m.d_model * e.expert_hidden;
  p.expert_parameters = moe_layers * e.num_experts * per_expert;
  p.experts_per_rank = e.num_experts / grid.expert;
  p.parameters_per_rank =
      p.parameters.total - p.expert_parameters + moe_layers * p.experts_per_rank * per_expert;
  p.tokens_per_rank = config.train.micro_batch / grid.world() * config.train.seq_len;
  p.flops_per_token = training_flops_per_token(m, e, config.train.seq_len);

  const double b = dtype == "bf16" ? 2.0 : 4.0;
  p.memory.weights = 4 * p.parameters_per_rank;
  p.memory.compute_weights = dtype == "bf16" ? 2 * p.parameters_per_rank : 0;
  p.memory.gradients = 4 * p.parameters_per_rank;
  p.memory.optimizer = 8 * p.parameters_per_rank;
  p.memory.activations = static_cast<int64_t>(ActivationModel{m, e, b}.per_token() *
                                              static_cast<double>(p.tokens_per_rank));
  return p;
}

DeviceEstimate estimate_on(const TrainingPlan& plan, const CatalogDevice& device, double mfu,
                           double tokens) {
  DeviceEstimate d;
  d.mfu = mfu;
  d.peak_tflops = device.peak_tflops(plan.dtype);
  d.fits = static_cast<double>(plan.memory.total()) <= device.memory_gb * 1e9;
  if (d.peak_tflops <= 0 || mfu <= 0) return d;
  const double seconds = tokens * plan.flops_per_token / (d.peak_tflops * 1e12 * mfu);
  d.device_hours = seconds / 3600.0;
  d.wall_hours = d.device_hours / static_cast<double>(plan.grid.world());
  d.cost = d.device_hours * device.price_per_hour;
  return d;
}

}  // namespace hetmoe
