// The decoder-only MoE transformer: embedding, pre-norm blocks (attention + dense or MoE FFN),
// final RMSNorm and the LM head (optionally NormHead).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>

#include <map>
#include <string>
#include <vector>

#include "hetmoe/config/config.h"
#include "hetmoe/model/layers.h"

namespace hetmoe {

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& model, const MoEConfig& moe, bool dense, ExpertShard shard = {});
  at::Tensor forward(const at::Tensor& x, MoEStats* stats);
  bool is_moe() const { return !moe.is_empty(); }

  RMSNorm attn_norm{nullptr}, ffn_norm{nullptr};
  Attention attn{nullptr};
  SwiGLU ffn{nullptr};
  MoELayer moe{nullptr};
};
TORCH_MODULE(Block);

struct ForwardOutput {
  at::Tensor logits;                          // [B, T, V] fp32
  at::Tensor aux_loss;                        // mean over MoE layers (0 when there are none)
  at::Tensor z_loss;                          // mean over MoE layers
  std::vector<at::Tensor> tokens_per_expert;  // one [E] tensor per MoE layer
  at::Tensor dropped;                         // total dropped slots
};

struct ParameterCount {
  int64_t total = 0;
  int64_t active_per_token = 0;  // parameters a token's forward pass touches
};

class TransformerImpl : public torch::nn::Module {
 public:
  // `shard`: the experts this rank holds under expert parallelism (default: all of them).
  TransformerImpl(const ModelConfig& model, const MoEConfig& moe, ExpertShard shard = {});
  // tokens [B, T] int64 (or int32), T <= model.max_seq_len -> logits and router statistics.
  // Other shapes and lengths, and on the CPU ids outside [0, vocab_size), are "[model]" errors
  // (a GPU's embedding fails a device-side check on such ids instead).
  ForwardOutput forward(const at::Tensor& tokens);
  // Weights for compute in `dtype` (fp32 or bf16); master weights stay fp32.
  void set_compute_dtype(at::ScalarType dtype) { compute_dtype_ = dtype; }
  at::ScalarType compute_dtype() const { return compute_dtype_; }
  ParameterCount parameter_count() const;
  // Normal(0, init_std) weights, residual-output projections scaled by 1/sqrt(2 n_layers), norms 1.
  // A shard's expert weights are its slice of the full draw, so every grid starts from the same
  // model.
  void reset_parameters(uint64_t seed);
  // Every MoE layer sends rows to remote experts through `exchange` (expert parallelism).
  void set_expert_exchange(const std::shared_ptr<ExpertExchange>& exchange);
  // Names of the parameters that are this rank's expert shard (w13, w2 of the MoE layers).
  static bool is_expert_parameter(const std::string& name);

  // The training step about to run (1-based) and the run's seed; MoE layers derive their routing
  // noise stream from (seed, layer, step).
  void set_step(int64_t step, uint64_t seed);
  // One tokens-per-expert tensor per MoE layer, in layer order (aux-loss-free bias update).
  void update_expert_bias(const std::vector<at::Tensor>& tokens_per_expert);
  // Parameters and buffers by name: what a checkpoint holds.
  std::map<std::string, at::Tensor> state_tensors() const;
  // Copies a checkpoint's tensors in; throws hetmoe::Error naming `source` and the first tensor
  // that is missing, has another shape or is not one of this model's (nothing is copied then).
  void load_state_tensors(const std::map<std::string, at::Tensor>& tensors,
                          const std::string& source);

  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  RMSNorm final_norm{nullptr};
  at::Tensor head;  // [V, D]; the embedding weight itself when model.tie_embeddings

 private:
  ModelConfig model_;
  MoEConfig moe_;
  ExpertShard shard_;
  at::ScalarType compute_dtype_ = at::kFloat;
};
TORCH_MODULE(Transformer);

// The parameter count the config implies, without building the model (plan/logging use this;
// a test checks it against parameter_count()).
ParameterCount count_parameters(const ModelConfig& model, const MoEConfig& moe);

// Training FLOPs per token (forward + backward) for sequences of seq_len tokens: 6 per active
// matrix parameter (the embedding lookup is not a product) plus causal attention's
// 6 * n_layers * seq_len * d_model. The numerator of MFU.
double training_flops_per_token(const ModelConfig& model, const MoEConfig& moe, int64_t seq_len);

}  // namespace hetmoe
