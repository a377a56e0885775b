#include "hetmoe/model/transformer.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>

#include "hetmoe/core/error.h"
#include "hetmoe/ops/moe_ops.h"

namespace hetmoe {

BlockImpl::BlockImpl(const ModelConfig& model, const MoEConfig& moe_config, bool dense,
                     ExpertShard shard) {
  attn_norm = register_module("attn_norm", RMSNorm(model.d_model, model.norm_eps));
  attn = register_module("attn", Attention(model));
  ffn_norm = register_module("ffn_norm", RMSNorm(model.d_model, model.norm_eps));
  if (dense)
    ffn = register_module("ffn", SwiGLU(model.d_model, model.dense_ffn_hidden));
  else
    moe = register_module("moe", MoELayer(model, moe_config, shard));
}

at::Tensor BlockImpl::forward(const at::Tensor& x, MoEStats* stats) {
  at::Tensor h = x + attn->forward(attn_norm->forward(x));
  at::Tensor n = ffn_norm->forward(h);
  if (!is_moe()) return h + ffn->forward(n);
  const auto b = n.size(0), t = n.size(1), d = n.size(2);
  return h + moe->forward(n.reshape({b * t, d}), stats, t).view({b, t, d});
}

TransformerImpl::TransformerImpl(const ModelConfig& model, const MoEConfig& moe, ExpertShard shard)
    : model_(model), moe_(moe), shard_(shard) {
  if (shard_.count < 0) shard_ = ExpertShard{0, moe.num_experts};
  embed = register_module("embed", torch::nn::Embedding(model.vocab_size, model.d_model));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < model.n_layers; ++i)
    blocks->push_back(Block(model, moe, /*dense=*/i < model.first_k_dense, shard_));
  final_norm = register_module("final_norm", RMSNorm(model.d_model, model.norm_eps));
  // Tied: the LM head is the embedding matrix itself (one parameter, registered once).
  head = model.tie_embeddings
             ? embed->weight
             : register_parameter("head", at::empty({model.vocab_size, model.d_model}));
  reset_parameters(0);
}

void TransformerImpl::reset_parameters(uint64_t seed) {
  at::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = model_.init_std;
  const double out_std = std / std::sqrt(2.0 * model_.n_layers);
  for (auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    at::Tensor init;
    if (name.find("norm") != std::string::npos) {
      init = at::ones(p.sizes());
    } else {
      const bool residual_out =
          name.find(".wo.") != std::string::npos || name.find(".w2") != std::string::npos;
      if (is_expert_parameter(name) && shard_.count != moe_.num_experts) {
        // Draw all experts, keep this shard's: the same numbers as an unsharded model.
        std::vector<int64_t> full(p.sizes().begin(), p.sizes().end());
        full[0] = moe_.num_experts;
        init = at::normal(0.0, residual_out ? out_std : std, full, gen)
                   .narrow(0, shard_.first, shard_.count);
      } else {
        init = at::normal(0.0, residual_out ? out_std : std, p.sizes(), gen);
      }
    }
    p.copy_(init);
  }
}

bool TransformerImpl::is_expert_parameter(const std::string& name) {
  auto ends_with = [&](const char* tail) {
    const std::string t(tail);
    return name.size() >= t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0;
  };
  return ends_with(".moe.w13") || ends_with(".moe.w2");
}

void TransformerImpl::set_expert_exchange(const std::shared_ptr<ExpertExchange>& exchange) {
  for (const auto& m : *blocks) {
    auto* block = m->as<BlockImpl>();
    if (block->is_moe()) block->moe->set_expert_exchange(exchange);
  }
}

void TransformerImpl::set_step(int64_t step, uint64_t seed) {
  uint64_t layer = 0;
  for (const auto& m : *blocks) {
    auto* block = m->as<BlockImpl>();
    ++layer;
    // splitmix-style spread so neighbouring (seed, layer, step) give unrelated streams.
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (layer * 1000003ULL + static_cast<uint64_t>(step));
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    if (block->is_moe()) block->moe->set_step(step, z ^ (z >> 31));
  }
}

void TransformerImpl::update_expert_bias(const std::vector<at::Tensor>& tokens_per_expert) {
  size_t i = 0;
  for (const auto& m : *blocks) {
    auto* block = m->as<BlockImpl>();
    if (block->is_moe() && i < tokens_per_expert.size())
      block->moe->update_expert_bias(tokens_per_expert[i++]);
  }
}

std::map<std::string, at::Tensor> TransformerImpl::state_tensors() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : named_parameters()) out.emplace(p.key(), p.value());
  for (const auto& b : named_buffers()) out.emplace(b.key(), b.value());
  return out;
}

void TransformerImpl::load_state_tensors(const std::map<std::string, at::Tensor>& tensors,
                                         const std::string& source) {
  at::NoGradGuard no_grad;
  const std::map<std::string, at::Tensor> mine = state_tensors();
  // Every check before any copy: a refused checkpoint leaves the model as it was.
  for (const auto& [name, t] : mine) {
    auto it = tensors.find(name);
    HETMOE_CHECK(it != tensors.end(), "model", "'", source, "' has no tensor '", name,
                 "' (was it made with another model config?)");
    HETMOE_CHECK(it->second.sizes() == t.sizes(), "model", "'", source, "': tensor '", name,
                 "' has shape ", it->second.sizes(), ", the model needs ", t.sizes());
  }
  // A tensor this model lacks means a bigger model (more layers, shared experts): loading the
  // rest would silently drop part of it.
  for (const auto& [name, t] : tensors)
    HETMOE_CHECK(mine.count(name) != 0, "model", "'", source, "' holds tensor '", name,
                 "', which this model does not have (was it made with another model config?)");
  for (const auto& [name, t] : mine) t.copy_(tensors.at(name));
}

ForwardOutput TransformerImpl::forward(const at::Tensor& tokens) {
  HETMOE_CHECK(
      tokens.dim() == 2 && (tokens.scalar_type() == at::kLong || tokens.scalar_type() == at::kInt),
      "model", "tokens must be [batch, seq] int64 (or int32) ids, got ",
      c10::toString(tokens.scalar_type()), " ", tokens.sizes());
  HETMOE_CHECK(tokens.size(1) <= model_.max_seq_len, "model", "tokens have ", tokens.size(1),
               " positions, more than model.max_seq_len (", model_.max_seq_len, ")");
  ForwardOutput out;
  at::Tensor embedded;
  try {
    embedded = embed->forward(tokens);
  } catch (const c10::IndexError&) {
    // The embedding's own check (on the CPU; a GPU fails it on the device). Found only here,
    // so correct input costs no extra pass or synchronisation.
    HETMOE_FAIL("model", "token ids must be in [0, model.vocab_size = ", model_.vocab_size,
                "), got ", tokens.min().item<int64_t>(), " to ", tokens.max().item<int64_t>());
  }
  at::Tensor x = embedded.to(compute_dtype_);
  std::vector<at::Tensor> aux, z, dropped;
  for (const auto& m : *blocks) {
    auto* block = m->as<BlockImpl>();
    MoEStats stats;
    x = block->forward(x, block->is_moe() ? &stats : nullptr);
    if (block->is_moe()) {
      aux.push_back(stats.aux_loss);
      z.push_back(stats.z_loss);
      dropped.push_back(stats.dropped);
      out.tokens_per_expert.push_back(stats.tokens_per_expert);
    }
  }
  x = final_norm->forward(x);
  at::Tensor w = head;
  if (model_.norm_head) {
    // NormHead: unit-norm rows, no gradient through the norm itself.
    w = head / head.detach().norm(2, 1, /*keepdim=*/true).clamp_min(1e-6);
  }
  // A head tied to the embedding gets its gradient from two places; autograd sums them before
  // adding to .grad(), and the WeightCastScope path would add one of them first: the same sum
  // rounded in another order. The plain cast keeps the numbers the same with or without it.
  const bool tied = model_.tie_embeddings && !model_.norm_head;
  out.logits = ops::linear(x, tied ? w.to(x.scalar_type()) : compute_weight(w, x.scalar_type()))
                   .to(at::kFloat);
  auto zero = at::zeros({}, out.logits.options());
  out.aux_loss = aux.empty() ? zero : at::stack(aux).mean();
  out.z_loss = z.empty() ? zero : at::stack(z).mean();
  out.dropped = dropped.empty() ? zero.to(at::kLong) : at::stack(dropped).sum();
  return out;
}

ParameterCount count_parameters(const ModelConfig& m, const MoEConfig& e) {
  const int64_t d = m.d_model, hd = m.d_model / m.n_heads;
  const int64_t attn = d * (m.n_heads * hd) * 2 + d * (m.n_kv_heads * hd) * 2;
  const int64_t norms = 2 * d;
  const int64_t dense_ffn = 3 * d * m.dense_ffn_hidden;
  const int64_t expert = 3 * d * e.expert_hidden;
  const int64_t shared = e.num_shared_experts * expert;
  const int64_t router = e.num_experts * d;
  const int64_t n_dense = m.first_k_dense, n_moe = m.n_layers - m.first_k_dense;
  // Embedding, LM head (unless tied to the embedding) and the final norm.
  const int64_t ends = m.vocab_size * d * (m.tie_embeddings ? 1 : 2) + d;
  ParameterCount c;
  c.total = ends + n_dense * (attn + norms + dense_ffn) +
            n_moe * (attn + norms + router + shared + e.num_experts * expert);
  c.active_per_token = ends + n_dense * (attn + norms + dense_ffn) +
                       n_moe * (attn + norms + router + shared + e.top_k * expert);
  return c;
}

double training_flops_per_token(const ModelConfig& m, const MoEConfig& e, int64_t seq_len) {
  const ParameterCount c = count_parameters(m, e);
  // Norm weights and the router's softmax are negligible; the embedding is a lookup, unless tied,
  // in which case the same matrix is also the head's product.
  const double matrix_params =
      static_cast<double>(c.active_per_token) -
      (m.tie_embeddings ? 0.0 : static_cast<double>(m.vocab_size * m.d_model));
  return 6.0 * matrix_params + 6.0 * m.n_layers * static_cast<double>(seq_len) * m.d_model;
}

ParameterCount TransformerImpl::parameter_count() const {
  ParameterCount c;
  int64_t inactive = 0;
  for (const auto& p : parameters()) c.total += p.numel();
  for (const auto& m : *blocks) {
    auto* block = m->as<BlockImpl>();
    if (!block->is_moe()) continue;
    const auto& moe = block->moe;
    // A shard holds shard().count experts; the count is of the whole model.
    const int64_t per_expert = (moe->w13.numel() + moe->w2.numel()) / moe->shard().count;
    c.total += (moe->config().num_experts - moe->shard().count) * per_expert;
    inactive += (moe->config().num_experts - moe->config().top_k) * per_expert;
  }
  c.active_per_token = c.total - inactive;
  return c;
}

}  // namespace hetmoe
