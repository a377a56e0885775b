#include "hetmoe/model/layers.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "hetmoe/core/error.h"
#include "hetmoe/ops/moe_ops.h"

namespace hetmoe {

struct WeightCastScope::Cache {
  struct Entry {
    at::Tensor master;  // held so that its address cannot be reused by another tensor
    at::Tensor cast;
    int64_t version = -1;
  };
  std::map<std::pair<const c10::TensorImpl*, at::ScalarType>, Entry> entries;
};

namespace {

thread_local WeightCastScope::Cache* t_weight_cache = nullptr;

// Returns the scope's cast of `master` unchanged; its backward adds the incoming 16-bit
// gradient into master's fp32 .grad() (the addition runs in fp32, as autograd's accumulation of
// an fp32 copy would, so the sums are the same bits) and passes nothing on to autograd.
struct ScopedCastFn : torch::autograd::Function<ScopedCastFn> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& master,
                            const at::Tensor& cast) {
    ctx->saved_data["master"] = master;
    // No gradient in means none added (not a .grad() of zeros where autograd leaves none).
    ctx->set_materialize_grads(false);
    return cast;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    at::Tensor master = ctx->saved_data["master"].toTensor();
    const at::Tensor& g = grads[0];
    if (g.defined()) {
      at::Tensor& acc = master.mutable_grad();
      if (acc.defined())
        acc.add_(g);
      else
        acc = at::empty_like(master).copy_(g);  // in the master's layout, as autograd's would be
    }
    return {at::Tensor(), at::Tensor()};
  }
};

// Weights follow the activations' dtype: fp32 master weights, bf16 compute when x is bf16.
at::Tensor as_compute(const at::Tensor& w, const at::Tensor& x) {
  return compute_weight(w, x.scalar_type());
}

}  // namespace

WeightCastScope::WeightCastScope() : cache_(std::make_unique<Cache>()) {
  HETMOE_CHECK(t_weight_cache == nullptr, "model",
               "a WeightCastScope is already open on this thread (scopes do not nest)");
  t_weight_cache = cache_.get();
}

WeightCastScope::~WeightCastScope() {
  if (t_weight_cache == cache_.get()) t_weight_cache = nullptr;
}

int64_t WeightCastScope::cached() const {
  return static_cast<int64_t>(cache_->entries.size());
}

bool WeightCastScope::active() {
  return t_weight_cache != nullptr;
}

at::Tensor compute_weight(const at::Tensor& w, at::ScalarType dtype) {
  if (w.scalar_type() == dtype) return w;
  WeightCastScope::Cache* cache = t_weight_cache;
  // Only parameters are kept: leaves that require a gradient. A computed weight (NormHead's
  // unit rows) changes with its inputs, and is a leaf too when computed without gradients;
  // casts made under InferenceMode could not be saved for a later backward.
  if (cache == nullptr || !w.is_leaf() || !w.requires_grad() || c10::InferenceMode::is_enabled())
    return w.to(dtype);
  WeightCastScope::Cache::Entry& e = cache->entries[{w.unsafeGetTensorImpl(), dtype}];
  if (!e.cast.defined() || e.version != w._version()) {
    at::NoGradGuard no_grad;
    e.master = w;
    e.cast = w.detach().to(dtype);
    e.version = w._version();
  }
  if (!at::GradMode::is_enabled()) return e.cast;
  return ScopedCastFn::apply(w, e.cast);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", at::ones({dim}));
}

// Statistics in fp32 whatever the compute dtype. at::rms_norm is LibTorch's fused kernel on a
// GPU (one pass forward, one backward, fp32 arithmetic inside) and its composite elsewhere
// (which upcasts 16-bit input to fp32 too). The fused kernel takes only input and weight of one
// dtype (a mixed pair falls back to the composite), so 16-bit compute passes the weight in the
// compute dtype, as for every other layer, instead of casting the activations to fp32 and back
// on both sides of the kernel: four passes over [tokens, d_model] fewer each way.
at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  return at::rms_norm(x, {weight.size(0)}, compute_weight(weight, x.scalar_type()), eps_);
}

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads_(c.n_heads),
      n_kv_heads_(c.n_kv_heads),
      head_dim_(c.d_model / c.n_heads),
      rope_theta_(c.rope_theta) {
  auto lin = [&](int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(c.d_model, out).bias(false));
  };
  wq = register_module("wq", lin(n_heads_ * head_dim_));
  wk = register_module("wk", lin(n_kv_heads_ * head_dim_));
  wv = register_module("wv", lin(n_kv_heads_ * head_dim_));
  wo = register_module("wo", lin(c.d_model));
}

std::pair<at::Tensor, at::Tensor> AttentionImpl::rope_tables(int64_t seq_len,
                                                             const at::Tensor& like) {
  if (!cos_.defined() || cos_.size(0) < seq_len || cos_.device() != like.device()) {
    const int64_t half = head_dim_ / 2;
    auto opts = at::TensorOptions().dtype(at::kDouble);
    at::Tensor inv = at::pow(rope_theta_, -at::arange(0, half, opts) * 2.0 / head_dim_);
    at::Tensor angles = at::outer(at::arange(0, seq_len, opts), inv);
    cos_ = angles.cos().to(at::kFloat).to(like.device());
    sin_ = angles.sin().to(at::kFloat).to(like.device());
  }
  return {cos_.narrow(0, 0, seq_len).to(like.scalar_type()),
          sin_.narrow(0, 0, seq_len).to(like.scalar_type())};
}

at::Tensor AttentionImpl::forward(const at::Tensor& x) {
  const int64_t b = x.size(0), t = x.size(1);
  auto proj = [&](torch::nn::Linear& l, int64_t heads) {
    return ops::linear(x, as_compute(l->weight, x)).view({b, t, heads, head_dim_}).transpose(1, 2);
  };
  at::Tensor q = proj(wq, n_heads_), k = proj(wk, n_kv_heads_), v = proj(wv, n_kv_heads_);
  auto [cos, sin] = rope_tables(t, q);
  q = ops::rotary_embedding(q, cos, sin);
  k = ops::rotary_embedding(k, cos, sin);
  // Grouped-query attention. SDPA's enable_gqa spares materialising the repeated K and V heads
  // where a fused kernel takes it: flash attention on the CPU, and on a GPU for 16-bit inputs.
  // A GPU in fp32 would fall back to the math kernel (a [B, H, T, T] matrix kept for the
  // backward), so there the heads are repeated for the memory-efficient kernel instead.
  const bool grouped = n_kv_heads_ != n_heads_;
  const bool fused_gqa = q.is_cpu() || q.scalar_type() != at::kFloat;
  if (grouped && !fused_gqa) {
    const int64_t rep = n_heads_ / n_kv_heads_;
    k = k.repeat_interleave(rep, 1);
    v = v.repeat_interleave(rep, 1);
  }
  at::Tensor o = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                  /*is_causal=*/true, /*scale=*/std::nullopt,
                                                  /*enable_gqa=*/grouped && fused_gqa);
  o = o.transpose(1, 2).reshape({b, t, n_heads_ * head_dim_});
  return ops::linear(o, as_compute(wo->weight, o));
}

SwiGLUImpl::SwiGLUImpl(int64_t dim, int64_t hidden) {
  w13 = register_module("w13",
                        torch::nn::Linear(torch::nn::LinearOptions(dim, 2 * hidden).bias(false)));
  w2 = register_module("w2", torch::nn::Linear(torch::nn::LinearOptions(hidden, dim).bias(false)));
}

at::Tensor SwiGLUImpl::forward(const at::Tensor& x) {
  at::Tensor a = ops::swiglu(ops::linear(x, as_compute(w13->weight, x)));
  return ops::linear(a, as_compute(w2->weight, a));
}

namespace {
ModelConfig model_of_width(int64_t d_model, double init_std) {
  ModelConfig m;
  m.d_model = d_model;
  m.init_std = init_std;
  return m;
}
}  // namespace

RouteParams route_params(const MoEConfig& moe) {
  RouteParams p;
  p.top_k = moe.top_k;
  p.sigmoid = moe.score_func == "sigmoid";
  p.renormalize = moe.renormalize;
  p.n_groups = moe.n_groups;
  p.topk_groups = moe.topk_groups;
  p.group_members = moe.group_score_members;
  return p;
}

MoELayerImpl::MoELayerImpl(int64_t d_model, const MoEConfig& moe, double init_std)
    : MoELayerImpl(model_of_width(d_model, init_std), moe) {}

MoELayerImpl::MoELayerImpl(const ModelConfig& model, const MoEConfig& moe, ExpertShard shard)
    : moe_(moe), shard_(shard) {
  const int64_t e = moe.num_experts, d = model.d_model, f = moe.expert_hidden;
  HETMOE_CHECK(d >= 1 && e >= 1 && f >= 1 && moe.num_shared_experts >= 0, "model",
               "MoE layer needs d_model, moe.num_experts and moe.expert_hidden >= 1 and "
               "moe.num_shared_experts >= 0 (got ",
               d, ", ", e, ", ", f, ", ", moe.num_shared_experts, ")");
  HETMOE_CHECK(moe.top_k >= 1 && moe.top_k <= e, "model", "moe.top_k ", moe.top_k,
               " must be between 1 and moe.num_experts (", e, ")");
  HETMOE_CHECK(moe.score_func == "softmax" || moe.score_func == "sigmoid", "model",
               "moe.score_func '", moe.score_func, "' is not softmax or sigmoid");
  if (shard_.count < 0) shard_ = ExpertShard{0, e};
  HETMOE_CHECK(shard_.first >= 0 && shard_.count >= 1 && shard_.first + shard_.count <= e, "model",
               "expert shard [", shard_.first, ", ", shard_.first + shard_.count, ") outside the ",
               e, " experts");
  const int64_t local = shard_.count;
  // Usable on its own (embedded in a user's model): normal(0, init_std) like the transformer's
  // reset_parameters, which re-draws them from its seed.
  router = register_parameter("router", at::randn({e, d}) * model.init_std);
  w13 = register_parameter("w13", at::randn({local, d, 2 * f}) * model.init_std);
  w2 = register_parameter("w2", at::randn({local, f, d}) * model.init_std);
  if (moe.num_shared_experts > 0)
    shared = register_module("shared", SwiGLU(d, moe.num_shared_experts * f));
  expert_bias = register_buffer("expert_bias", at::zeros({e}));
  logit_mean = register_buffer("logit_mean", at::zeros({e}));
  logit_var = register_buffer("logit_var", at::ones({e}));
  logit_updates = register_buffer("logit_updates", at::zeros({}, at::kLong));
}

void MoELayerImpl::set_step(int64_t step, uint64_t noise_seed) {
  step_ = step;
  noise_seed_ = noise_seed;
  draws_ = 0;
}

double MoELayerImpl::warmup_alpha() const {
  const int64_t w = moe_.routing_warmup_steps;
  if (w <= 0 || step_ <= 0) return 1.0;
  return std::min(1.0, static_cast<double>(step_) / static_cast<double>(w));
}

at::Tensor MoELayerImpl::warmup_logits(const at::Tensor& logits) {
  {
    // Running statistics (EMA, momentum 0.99; the first update takes the batch's own).
    at::NoGradGuard no_grad;
    // Decided on the device: reading the counter on the host would synchronise every layer.
    at::Tensor mean, var;
    if (exchange_ && exchange_->token_ranks() > 1) {
      // Over the global micro-batch, every rank's tokens, as one process sees them: each grid
      // shape then keeps the same statistics (and every rank the same buffers).
      const at::Tensor l = logits.detach().to(at::kDouble);
      const at::Tensor sums =
          exchange_->sum_over_token_ranks(at::stack({l.sum(0), l.pow(2).sum(0)}));
      const double count = static_cast<double>(logits.size(0) * exchange_->token_ranks());
      const at::Tensor m = sums[0] / count;
      mean = m.to(at::kFloat);
      var = (sums[1] / count - m * m).clamp_min(0).to(at::kFloat);
    } else {
      mean = logits.mean(0);
      var = logits.var(0, /*unbiased=*/false);
    }
    at::Tensor first = logit_updates.eq(0);
    logit_mean.copy_(at::where(first, mean, logit_mean.mul(0.99).add(mean, 0.01)));
    logit_var.copy_(at::where(first, var, logit_var.mul(0.99).add(var, 0.01)));
    logit_updates.add_(1);
  }
  const double alpha = warmup_alpha();
  if (alpha >= 1.0) return logits;
  // Noise from a stream fixed by (seed, step, draw within the step): each micro-batch of a step
  // gets its own, every step differs even when the caller passes the same seed each time, and a
  // resumed run draws the same noise.
  uint64_t z = noise_seed_ + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(step_) * 4099ULL +
                                                      static_cast<uint64_t>(draws_++) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(z ^ (z >> 31));
  // Drawn for the global micro-batch; this rank takes its block, so a token gets the same noise
  // whatever the grid.
  const int64_t n = logits.size(0), ranks = exchange_ ? exchange_->token_ranks() : 1;
  at::Tensor eps =
      at::randn({n * ranks, logits.size(1)}, gen, at::TensorOptions().dtype(at::kFloat));
  if (ranks > 1) eps = eps.narrow(0, exchange_->token_rank() * n, n);
  eps = eps.to(logits.device());
  at::Tensor noise = logit_mean + logit_var.sqrt() * eps;
  return alpha * logits + (1.0 - alpha) * noise;
}

void MoELayerImpl::update_expert_bias(const at::Tensor& tokens_per_expert) {
  if (moe_.bias_update_rate <= 0) return;
  at::NoGradGuard no_grad;
  at::Tensor load = tokens_per_expert.to(expert_bias.device(), at::kFloat);
  expert_bias.add_(at::sign(load.mean() - load), moe_.bias_update_rate);
}

at::Tensor MoELayerImpl::forward(const at::Tensor& x, MoEStats* stats, int64_t seq_len) {
  HETMOE_CHECK(x.dim() == 2 && x.size(1) == router.size(1), "model",
               "MoE layer input must be [tokens, ", router.size(1), "], got ", x.sizes());
  const int64_t n = x.size(0), e = moe_.num_experts, k = moe_.top_k;
  HETMOE_CHECK(seq_len >= 0 && (seq_len == 0 || n % seq_len == 0), "model", "MoE layer seq_len ",
               seq_len, " does not divide its ", n, " tokens into whole sequences");
  // Router in fp32 whatever the compute dtype (Ling: routing decisions are precision-sensitive).
  at::Tensor logits = ops::linear(x.to(router.scalar_type()), router);
  if (is_training() && moe_.routing_warmup_steps > 0 && step_ >= 1 &&
      step_ <= moe_.routing_warmup_steps)
    logits = warmup_logits(logits);
  RouteParams params = route_params(moe_);
  if (moe_.bias_update_rate > 0) params.bias = expert_bias;
  RouteResult r = ops::route(logits, params);
  PermuteOptions capacity;
  if (!moe_.dropless) {
    // Capacity C = ceil(cf * N * k / E) slots per expert; an expert over capacity drops its
    // lowest-scoring slots (they get no row and contribute nothing to their token's output).
    capacity.capacity =
        static_cast<int64_t>(std::ceil(moe_.capacity_factor * static_cast<double>(n * k) / e));
    capacity.priority = r.scores.detach().gather(1, r.expert_index);
  }
  PermuteResult perm = ops::permute(x, r.expert_index, e, capacity);
  at::Tensor y, shared_out;
  auto run_shared = [&] {
    if (!shared.is_empty()) shared_out = shared->forward(x);
  };
  if (exchange_) {
    // Expert parallelism: rows travel to the ranks that own their experts and back; the shared
    // experts, which need none of them, run while they travel.
    ExpertExchange::Dispatched d =
        exchange_->dispatch_overlapped(perm.permuted, perm.tokens_per_expert, run_shared);
    y = exchange_->combine(
        ops::expert_ffn(d.rows, as_compute(w13, x), as_compute(w2, x), d.tokens_per_expert), d);
  } else {
    y = ops::expert_ffn(perm.permuted, as_compute(w13, x), as_compute(w2, x),
                        perm.tokens_per_expert);
  }
  at::Tensor out = ops::unpermute(y, r.expert_weight, perm);
  if (!exchange_) run_shared();
  if (shared_out.defined()) out = out + shared_out;
  if (stats) {
    // Load over all ranks' tokens: what the balance loss and the bias update must see, and the
    // same on every rank.
    at::Tensor global_counts =
        exchange_ ? exchange_->sum_over_token_ranks(r.tokens_per_expert) : r.tokens_per_expert;
    // P_i: the mean routing probability of expert i. Sigmoid scores do not sum to 1 over the
    // experts, so each token's are normalised first (DeepSeek-V3, Megatron-Core); without it
    // sum_i P_i is about E/2 and the loss pushes every logit down alike.
    const at::Tensor probs =
        params.sigmoid ? r.scores / (r.scores.sum(-1, /*keepdim=*/true) + 1e-20) : r.scores;
    if (moe_.aux_loss_type == "sequence" && seq_len > 0) {
      // Balance within each sequence: f and P per sequence, the loss averaged over sequences.
      const int64_t seqs = n / seq_len;
      at::Tensor counts = at::zeros({seqs, e}, r.scores.options())
                              .scatter_add_(1, r.expert_index.view({seqs, seq_len * k}),
                                            at::ones({seqs, seq_len * k}, r.scores.options()));
      at::Tensor fraction = counts / static_cast<double>(seq_len * k);
      stats->aux_loss = e * (fraction * probs.view({seqs, seq_len, e}).mean(1)).sum(1).mean();
    } else {
      // f_i over the whole global batch (every rank's tokens), P_i over this rank's: the mean
      // of this loss over ranks is then exactly the single-process loss of the global batch.
      const int64_t ranks = exchange_ ? exchange_->token_ranks() : 1;
      at::Tensor fraction = global_counts.to(at::kFloat) / static_cast<double>(n * k * ranks);
      stats->aux_loss = e * (fraction * probs.mean(0)).sum();
    }
    stats->z_loss = at::logsumexp(logits, -1).pow(2).mean();
    stats->tokens_per_expert = global_counts;
    stats->dropped = perm.dropped;
  }
  return out;
}

}  // namespace hetmoe
