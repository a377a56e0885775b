// Building blocks of the Ling-style decoder: RMSNorm, rotary grouped-query attention, the dense
// SwiGLU FFN and the MoE layer (router + routed SwiGLU experts + shared experts).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <functional>
#include <memory>

#include "hetmoe/config/config.h"
#include "hetmoe/device/kernels.h"

namespace hetmoe {

// One training step's weights in the compute dtype (bf16 compute over fp32 master weights). The
// Trainer opens one around each step's micro-batches; research code with a loop of its own can
// do the same (docs/embedding.md). While one is open on a thread:
// - each parameter (a leaf that requires a gradient) a layer casts is cast once and the copy
//   reused by every micro-batch, instead of once per forward. It is cast again when the
//   parameter's version counter has moved (in-place ATen ops, hetmoe's AdamW); writes the
//   counter does not see go unnoticed: through data_ptr() or .data(), set_data() (and so
//   Module::to()), kernels such as at::_fused_adamw_ called directly;
// - the gradient of that cast is added straight into the master's fp32 .grad(), instead of
//   being copied to an fp32 tensor that autograd then adds to .grad(): one pass per weight and
//   micro-batch fewer, and the same numbers.
// What .grad() holds after backward() is unchanged, so optimizers, clipping and gradient
// synchronisation work as before. What bypasses autograd's accumulation does not see those
// gradients: torch::autograd::grad() taken with respect to a parameter, hooks registered on a
// parameter (register_hook, post-accumulate hooks). Scopes do not nest; close it before the
// optimizer updates the weights, and open a new one for the next step. (Trainer::train_step
// opens its own, or runs inside the caller's; its AdamW moves the version counters, so the
// caller's casts are refreshed after each update.)
class WeightCastScope {
 public:
  WeightCastScope();
  ~WeightCastScope();
  WeightCastScope(const WeightCastScope&) = delete;
  WeightCastScope& operator=(const WeightCastScope&) = delete;
  // Weights cast so far in this scope.
  int64_t cached() const;
  // Whether a scope is open on this thread.
  static bool active();
  struct Cache;  // the casts (defined in layers.cpp)

 private:
  std::unique_ptr<Cache> cache_;
};

// `w` in `dtype` for compute: `w` itself when it has that dtype already, else its cast (through
// the open WeightCastScope, if any). Differentiable with respect to `w`.
at::Tensor compute_weight(const at::Tensor& w, at::ScalarType dtype);

// x / sqrt(mean(x^2) + eps) * weight: the statistics in fp32, the weight (fp32 master) in the
// compute dtype.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Causal self-attention with RoPE and grouped-query heads, through LibTorch's fused
// scaled_dot_product_attention (no materialised mask).
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& c);
  at::Tensor forward(const at::Tensor& x);  // [B, T, D] -> [B, T, D]
  torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};

 private:
  std::pair<at::Tensor, at::Tensor> rope_tables(int64_t seq_len, const at::Tensor& like);
  int64_t n_heads_, n_kv_heads_, head_dim_;
  double rope_theta_;
  at::Tensor cos_, sin_;  // cached [T, head_dim/2] fp32 tables
};
TORCH_MODULE(Attention);

// silu(x W_gate) * (x W_up) W_down, with gate and up fused in one [2F, D] weight.
class SwiGLUImpl : public torch::nn::Module {
 public:
  SwiGLUImpl(int64_t dim, int64_t hidden);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear w13{nullptr}, w2{nullptr};
};
TORCH_MODULE(SwiGLU);

// What one MoE layer returns besides its output: the losses the router adds to the objective
// (unscaled) and the load it saw.
struct MoEStats {
  at::Tensor aux_loss;           // scalar fp32: E * sum_i f_i * P_i
  at::Tensor z_loss;             // scalar fp32: mean over tokens of logsumexp(logits)^2
  at::Tensor tokens_per_expert;  // [E] int64, this call's (token, slot) pairs per expert
  at::Tensor dropped;            // scalar int64: slots dropped by the capacity limit
};

// How an MoE layer reaches experts that live on other ranks (expert parallelism). hetmoe/parallel
// implements it over a communicator; without one, every expert is local.
class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  // The rows a rank's own experts receive, in local-expert-major order, and how many each gets.
  struct Dispatched {
    at::Tensor rows;               // [R_local, D]
    at::Tensor tokens_per_expert;  // [local experts] int64
    std::shared_ptr<void> plan;    // what combine needs to send the results back
  };
  // rows [R, D] in global expert order with tokens_per_expert [E] -> this rank's experts' rows.
  // Differentiable in rows.
  virtual Dispatched dispatch(const at::Tensor& rows, const at::Tensor& tokens_per_expert) = 0;
  // dispatch, with `overlap` run while the rows travel (the MoE layer passes its shared experts,
  // which need no exchanged rows). This default runs it first and then dispatches.
  virtual Dispatched dispatch_overlapped(const at::Tensor& rows,
                                         const at::Tensor& tokens_per_expert,
                                         const std::function<void()>& overlap) {
    overlap();
    return dispatch(rows, tokens_per_expert);
  }
  // The inverse: expert outputs in dispatched order -> [R, D] in the caller's order.
  virtual at::Tensor combine(const at::Tensor& rows, const Dispatched& dispatched) = 0;
  // Sum of `t` over every rank that holds tokens (routing statistics; no gradient).
  virtual at::Tensor sum_over_token_ranks(const at::Tensor& t) = 0;
  // How many ranks hold tokens, and which of them this one is: rank r's tokens are block r of
  // the global micro-batch (equal blocks, in rank order).
  virtual int64_t token_ranks() const = 0;
  virtual int64_t token_rank() const = 0;
};

// Which experts a layer holds: [first, first + count) of moe.num_experts (count -1: all).
struct ExpertShard {
  int64_t first = 0;
  int64_t count = -1;
};

// The MoE layer: an fp32 router (softmax or sigmoid scores, top-k, optional expert bias and
// group-limited routing), routed SwiGLU experts through the backend's grouped kernels, and
// shared experts every token passes through. Use it inside a model of one's own like any
// LibTorch module (`->to(device)`, `parameters()`, `train()`/`eval()`); see docs/embedding.md.
// The routing options a MoE config asks for: top-k, score function, renormalisation, groups.
// The expert bias is not among them: it is a layer's state (MoELayerImpl::expert_bias).
RouteParams route_params(const MoEConfig& moe);

class MoELayerImpl : public torch::nn::Module {
 public:
  // Of the model config, d_model (the input width) and init_std (weight init) are used.
  MoELayerImpl(const ModelConfig& model, const MoEConfig& moe, ExpertShard shard = {});
  // A layer for inputs d_model wide, weights drawn with standard deviation init_std.
  MoELayerImpl(int64_t d_model, const MoEConfig& moe, double init_std = 0.02);
  // x [N, D] -> [N, D] for N = sequences x seq_len tokens; `stats` (optional) receives the losses
  // and load. seq_len is needed by the sequence-level balance loss: 0 (the default) takes the
  // whole input as one sequence, and a seq_len that does not divide N is refused. The
  // caller adds moe.aux_loss_coef * stats->aux_loss + moe.z_loss_coef * stats->z_loss to its
  // objective (the layer returns them unscaled).
  at::Tensor forward(const at::Tensor& x, MoEStats* stats = nullptr, int64_t seq_len = 0);

  // The training step about to run (1-based) and the random stream of this layer's routing
  // noise: Ling's stochastic routing warmup blends the logits with noise while step <= W. The
  // noise of each training forward comes from (noise_seed, step, forwards since set_step): the
  // micro-batches of a step draw apart, and so do steps given the same noise_seed.
  void set_step(int64_t step, uint64_t noise_seed);
  // Aux-loss-free balancing: nudges each expert's selection bias by bias_update_rate towards the
  // mean load (up when the expert got fewer tokens than the mean, down when more).
  void update_expert_bias(const at::Tensor& tokens_per_expert);
  // alpha of the routing warmup at the current step (1 when it is off or over).
  double warmup_alpha() const;
  // Routes rows through `exchange` to experts on other ranks (expert parallelism).
  void set_expert_exchange(std::shared_ptr<ExpertExchange> exchange) {
    exchange_ = std::move(exchange);
  }
  const ExpertShard& shard() const { return shard_; }

  at::Tensor router;       // [E, D] fp32
  at::Tensor w13;          // [E_local, D, 2F]: this rank's experts (all E without parallelism)
  at::Tensor w2;           // [E_local, F, D]
  SwiGLU shared{nullptr};  // num_shared_experts experts fused into one FFN of hidden S*F
  // Buffers (checkpointed with the weights): the selection-only expert bias, and the running
  // per-expert mean and variance of the router logits with the number of updates behind them.
  at::Tensor expert_bias, logit_mean, logit_var, logit_updates;

  const MoEConfig& config() const { return moe_; }

 private:
  at::Tensor warmup_logits(const at::Tensor& logits);
  MoEConfig moe_;
  ExpertShard shard_;
  std::shared_ptr<ExpertExchange> exchange_;
  int64_t step_ = 0;
  uint64_t noise_seed_ = 0;
  int64_t draws_ = 0;  // routing-warmup noise draws since set_step (one per training forward)
};
TORCH_MODULE(MoELayer);

}  // namespace hetmoe
