// Building blocks of the Ling-style decoder: RMSNorm, rotary grouped-query attention, the dense
// SwiGLU FFN and the MoE layer (router + routed SwiGLU experts + shared experts).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "hetmoe/config/config.h"

namespace hetmoe {

// x / sqrt(mean(x^2) + eps) * weight, computed in fp32.
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

 private:
  int64_t hidden_;
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

class MoELayerImpl : public torch::nn::Module {
 public:
  MoELayerImpl(const ModelConfig& model, const MoEConfig& moe);
  // x [N, D] -> [N, D] for N = sequences x seq_len tokens; `stats` (optional) receives the losses
  // and load. seq_len is needed by the sequence-level balance loss (0: one sequence).
  at::Tensor forward(const at::Tensor& x, MoEStats* stats = nullptr, int64_t seq_len = 0);

  // The training step about to run (1-based) and the random stream of this layer's routing
  // noise: Ling's stochastic routing warmup blends the logits with noise while step <= W.
  void set_step(int64_t step, uint64_t noise_seed);
  // Aux-loss-free balancing: nudges each expert's selection bias by bias_update_rate towards the
  // mean load (up when the expert got fewer tokens than the mean, down when more).
  void update_expert_bias(const at::Tensor& tokens_per_expert);
  // alpha of the routing warmup at the current step (1 when it is off or over).
  double warmup_alpha() const;

  at::Tensor router;       // [E, D] fp32
  at::Tensor w13;          // [E, D, 2F]
  at::Tensor w2;           // [E, F, D]
  SwiGLU shared{nullptr};  // num_shared_experts experts fused into one FFN of hidden S*F
  // Buffers (checkpointed with the weights): the selection-only expert bias, and the running
  // per-expert mean and variance of the router logits with the number of updates behind them.
  at::Tensor expert_bias, logit_mean, logit_var, logit_updates;

  const MoEConfig& config() const { return moe_; }

 private:
  at::Tensor warmup_logits(const at::Tensor& logits);
  MoEConfig moe_;
  int64_t step_ = 0;
  uint64_t noise_seed_ = 0;
};
TORCH_MODULE(MoELayer);

}  // namespace hetmoe
