// Model: router losses by hand, shapes, parameter counts, causal masking, NormHead, capacity.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>

#include "hetmoe/core/error.h"
#include "hetmoe/model/transformer.h"
#include "hetmoe/train/generate.h"
#include "hetmoe/train/optimizer.h"
#include "support/error_of.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

ModelConfig small_model() {
  ModelConfig m;
  m.vocab_size = 257;
  m.d_model = 32;
  m.n_layers = 3;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.max_seq_len = 32;
  m.first_k_dense = 1;
  m.dense_ffn_hidden = 48;
  return m;
}

MoEConfig small_moe() {
  MoEConfig e;
  e.num_experts = 4;
  e.top_k = 2;
  e.expert_hidden = 16;
  e.num_shared_experts = 1;
  return e;
}

TEST(MoELayerTest, RouterLossesMatchHandComputedValues) {
  ModelConfig m;
  m.d_model = 2;
  MoEConfig e;
  e.num_experts = 2;
  e.top_k = 1;
  e.expert_hidden = 2;
  e.num_shared_experts = 0;
  MoELayer layer(m, e);
  const double ln3 = std::log(3.0);
  {
    at::NoGradGuard g;
    layer->router.copy_(at::tensor({0.0, 0.0, ln3, 0.0}, at::kFloat).view({2, 2}));
  }
  // logits: [0, ln3] -> p (.25, .75), expert 1; [0, -ln3] -> (.75, .25), expert 0;
  //         [0, 2 ln3] -> (.1, .9), expert 1.
  at::Tensor x = at::tensor({1.0f, 0.0f, -1.0f, 0.0f, 2.0f, 0.0f}).view({3, 2});
  MoEStats s;
  layer->forward(x, &s);
  EXPECT_TRUE(at::equal(s.tokens_per_expert, at::tensor({1, 2}, at::kLong)));
  // aux = E * sum_i f_i P_i with f = (1/3, 2/3) and P = (1.1/3, 1.9/3).
  EXPECT_NEAR(s.aux_loss.item<double>(), 2.0 * (1.0 / 3 * 1.1 / 3 + 2.0 / 3 * 1.9 / 3), 1e-6);
  const double z = (std::pow(std::log(4.0), 2) + std::pow(std::log(4.0 / 3.0), 2) +
                    std::pow(std::log(10.0), 2)) /
                   3.0;
  EXPECT_NEAR(s.z_loss.item<double>(), z, 1e-5);
  EXPECT_EQ(s.dropped.item<int64_t>(), 0);
}

// Sigmoid scores: P_i comes from each token's scores normalised to sum 1 (DeepSeek-V3), so the
// loss is 1 at perfect balance whatever the scale of the scores, and its gradient then pushes no
// logit.
TEST(MoELayerTest, SigmoidBalanceLossNormalisesEachTokensScores) {
  ModelConfig m;
  m.d_model = 4;
  MoEConfig e;
  e.num_experts = 4;
  e.top_k = 2;
  e.expert_hidden = 2;
  e.num_shared_experts = 0;
  e.score_func = "sigmoid";
  MoELayer layer(m, e);
  {
    at::NoGradGuard g;
    layer->router.copy_(at::eye(4) * 3.0);
  }
  // Token t's logits: 3 for expert t, 1.5 for expert t+1 (mod 4), 0 for the others. It chooses
  // those two, so every expert gets 2 of the 8 slots and, by symmetry, P_i = 1/4.
  at::Tensor x = at::eye(4) + at::roll(at::eye(4), 1, 1) * 0.5;
  MoEStats s;
  layer->forward(x, &s);
  ASSERT_TRUE(at::equal(s.tokens_per_expert, at::full({4}, 2, at::kLong))) << s.tokens_per_expert;
  EXPECT_NEAR(s.aux_loss.item<double>(), 1.0, 1e-6);
  s.aux_loss.backward();
  EXPECT_LT(layer->router.grad().abs().max().item<double>(), 1e-6) << layer->router.grad();
}

TEST(MoELayerTest, CapacityDropsLowestWeightSlotsAndCountsThem) {
  ModelConfig m;
  m.d_model = 8;
  MoEConfig e;
  e.num_experts = 2;
  e.top_k = 1;
  e.expert_hidden = 4;
  e.num_shared_experts = 0;
  e.dropless = false;
  e.renormalize = false;    // weights are the probabilities, so they rank the slots
  e.capacity_factor = 0.5;  // capacity ceil(0.5 * 8 / 2) = 2 slots per expert
  MoELayer layer(m, e);
  {
    at::NoGradGuard g;
    for (auto& p : layer->parameters()) p.normal_(0, 0.5);
    layer->router.zero_();
    layer->router[0][0] = 1.0f;  // logit difference grows with x[:, 0]
  }
  at::Tensor x = at::randn({8, 8});
  x.select(1, 0).copy_(at::tensor({3.f, 2.f, 1.f, 0.5f, -0.5f, -1.f, -2.f, -3.f}));
  MoEStats s;
  at::Tensor out = layer->forward(x, &s);
  // 4 tokens per expert, capacity 2: 2 dropped on each.
  EXPECT_EQ(s.dropped.item<int64_t>(), 4);
  // Dropped tokens (the weakest, nearest zero logits) get no routed output and no shared expert.
  EXPECT_EQ(out[2].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(out[5].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(out[0].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(out[7].abs().sum().item<float>(), 0.0f);
}

TEST(MoELayerTest, RoutingWarmupBlendsNoiseThenSwitchesOff) {
  ModelConfig m;
  m.d_model = 16;
  MoEConfig e;
  e.num_experts = 4;
  e.top_k = 2;
  e.expert_hidden = 8;
  e.routing_warmup_steps = 4;
  MoELayer layer(m, e), plain(m, MoEConfig{e.num_experts, e.top_k, e.expert_hidden});
  {
    at::NoGradGuard g;
    auto src = layer->named_parameters();
    for (auto& p : plain->named_parameters()) p.value().copy_(src[p.key()]);
  }
  at::Tensor x = at::randn({32, 16});
  layer->train();
  plain->train();
  const double alphas[] = {0.25, 0.5, 0.75, 1.0, 1.0};
  // The logit statistics: the first update takes the batch's own, later ones blend 0.99/0.01.
  const at::Tensor logits = x.matmul(layer->router.detach().t());
  const at::Tensor mean = logits.mean(0), var = logits.var(0, /*unbiased=*/false);
  for (int64_t step = 1; step <= 5; ++step) {
    layer->set_step(step, 7);
    EXPECT_DOUBLE_EQ(layer->warmup_alpha(), alphas[step - 1]);
    at::Tensor out = layer->forward(x), ref = plain->forward(x);
    if (step <= 4) {  // the statistics are kept during warmup only
      EXPECT_EQ(layer->logit_updates.item<int64_t>(), step);
      EXPECT_TRUE(at::allclose(layer->logit_mean, mean, 1e-5, 1e-6)) << "step " << step;
      EXPECT_TRUE(at::allclose(layer->logit_var, var, 1e-5, 1e-6)) << "step " << step;
    }
    if (step < 4) {
      EXPECT_FALSE(at::allclose(out, ref)) << "step " << step;
    } else {
      EXPECT_TRUE(at::allclose(out, ref, 1e-6, 1e-6)) << "step " << step;
    }
  }
  EXPECT_GT(layer->logit_updates.item<int64_t>(), 0);
  layer->eval();
  layer->set_step(1, 7);
  EXPECT_TRUE(at::allclose(layer->forward(x), plain->forward(x), 1e-6, 1e-6));  // eval: no noise
}

// The warmup noise differs between the micro-batches of a step and between steps given the same
// seed, and set_step replays it exactly.
TEST(MoELayerTest, RoutingWarmupNoiseIsFreshPerForwardAndReplayable) {
  ModelConfig m;
  m.d_model = 16;
  MoEConfig e;
  e.num_experts = 8;
  e.top_k = 2;
  e.expert_hidden = 8;
  e.routing_warmup_steps = 100;
  MoELayer layer(m, e);
  layer->train();
  at::Tensor x = at::randn({64, 16});
  auto outputs = [&](int64_t step) {
    {
      at::NoGradGuard g;  // the same statistics before each replay
      layer->logit_updates.zero_();
    }
    layer->set_step(step, 7);
    at::Tensor first = layer->forward(x).detach();
    return std::make_pair(first, layer->forward(x).detach());
  };
  const auto [a1, a2] = outputs(1);
  EXPECT_FALSE(at::allclose(a1, a2)) << "two micro-batches of a step drew the same noise";
  const auto [b1, b2] = outputs(1);
  EXPECT_TRUE(at::equal(a1, b1));
  EXPECT_TRUE(at::equal(a2, b2));
  // Steps 1 and 2 under one seed: compared at the same blend (alpha 2/100 at step 2 here, and
  // 1/50 at step 1 in a twin whose warmup is 50 steps), so only the noise can differ.
  MoEConfig e50 = e;
  e50.routing_warmup_steps = 50;
  MoELayer twin(m, e50);
  {
    at::NoGradGuard g;
    auto src = layer->named_parameters();
    for (auto& p : twin->named_parameters()) p.value().copy_(src[p.key()]);
    layer->logit_updates.zero_();
  }
  twin->train();
  layer->set_step(2, 7);
  twin->set_step(1, 7);
  ASSERT_DOUBLE_EQ(layer->warmup_alpha(), twin->warmup_alpha());
  EXPECT_FALSE(at::allclose(layer->forward(x).detach(), twin->forward(x).detach()))
      << "steps 1 and 2 drew the same noise";
}

TEST(MoELayerTest, RoutingWarmupStatisticsAreAnEmaSeededByTheFirstBatch) {
  ModelConfig m;
  m.d_model = 16;
  MoEConfig e{/*num_experts=*/4, /*top_k=*/2, /*expert_hidden=*/8};
  e.routing_warmup_steps = 10;
  MoELayer layer(m, e);
  layer->train();
  at::Tensor x1 = at::randn({32, 16}), x2 = at::randn({32, 16}) + 1.0;
  const at::Tensor w = layer->router.detach().t();
  const at::Tensor l1 = x1.matmul(w), l2 = x2.matmul(w);
  layer->set_step(1, 7);
  layer->forward(x1);
  layer->set_step(2, 7);
  layer->forward(x2);
  const at::Tensor mean = 0.99 * l1.mean(0) + 0.01 * l2.mean(0);
  const at::Tensor var = 0.99 * l1.var(0, false) + 0.01 * l2.var(0, false);
  EXPECT_TRUE(at::allclose(layer->logit_mean, mean, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(layer->logit_var, var, 1e-5, 1e-6));
  EXPECT_EQ(layer->logit_updates.item<int64_t>(), 2);
}

TEST(MoELayerTest, ExpertBiasMovesTowardsBalance) {
  ModelConfig m;
  m.d_model = 8;
  MoEConfig e;
  e.num_experts = 4;
  e.top_k = 1;
  e.expert_hidden = 4;
  e.bias_update_rate = 0.01;
  MoELayer layer(m, e);
  layer->update_expert_bias(at::tensor({10, 2, 4, 0}, at::kLong));  // mean 4
  EXPECT_TRUE(at::allclose(layer->expert_bias, at::tensor({-0.01f, 0.01f, 0.0f, 0.01f})));
}

TEST(MoELayerTest, SequenceAuxLossIsTheMeanOfPerSequenceLosses) {
  ModelConfig m;
  m.d_model = 8;
  MoEConfig e;
  e.num_experts = 4;
  e.top_k = 2;
  e.expert_hidden = 4;
  e.aux_loss_type = "sequence";
  MoELayer layer(m, e);
  at::Tensor x = at::randn({3 * 5, 8});
  MoEStats all;
  layer->forward(x, &all, 5);
  double sum = 0;
  for (int s = 0; s < 3; ++s) {
    MoEStats one;
    layer->forward(x.narrow(0, 5 * s, 5), &one, 5);
    sum += one.aux_loss.item<double>();
  }
  EXPECT_NEAR(all.aux_loss.item<double>(), sum / 3, 1e-6);
  // Without seq_len the input is one sequence; a seq_len that does not divide it is refused
  // rather than silently replaced by the micro-batch loss.
  MoEStats whole, one_seq;
  layer->forward(x, &whole);
  layer->forward(x, &one_seq, 15);
  EXPECT_NEAR(whole.aux_loss.item<double>(), one_seq.aux_loss.item<double>(), 1e-6);
  EXPECT_THROW(layer->forward(x, &all, 4), Error);
  EXPECT_THROW(layer->forward(x, &all, -5), Error);
}

// Attention against a naive computation in double: projections, RoPE on pairs (i, i + d/2),
// each KV head serving n_heads / n_kv_heads consecutive query heads, causal softmax.
TEST(AttentionTest, GroupedQueryAttentionMatchesANaiveComputation) {
  const ModelConfig m = small_model();  // 4 query heads, 2 KV heads, head dim 8
  const int64_t b = 2, t = 6, h = m.n_heads, kv = m.n_kv_heads, d = m.d_model / m.n_heads;
  at::manual_seed(7);
  Attention attn(m);
  at::Tensor x = at::randn({b, t, m.d_model});
  at::Tensor y = attn->forward(x);

  at::Tensor xd = x.to(at::kDouble);
  auto proj = [&](const torch::nn::Linear& l, int64_t heads) {
    return xd.matmul(l->weight.to(at::kDouble).t()).view({b, t, heads, d}).transpose(1, 2);
  };
  auto rope = [&](at::Tensor z) {
    at::Tensor out = z.clone();
    for (int64_t pos = 0; pos < t; ++pos) {
      for (int64_t i = 0; i < d / 2; ++i) {
        const double angle = pos * std::pow(m.rope_theta, -2.0 * i / d);
        at::Tensor a = z.select(2, pos).select(-1, i), c = z.select(2, pos).select(-1, i + d / 2);
        out.select(2, pos).select(-1, i).copy_(a * std::cos(angle) - c * std::sin(angle));
        out.select(2, pos).select(-1, i + d / 2).copy_(c * std::cos(angle) + a * std::sin(angle));
      }
    }
    return out;
  };
  at::Tensor q = rope(proj(attn->wq, h));
  at::Tensor k = rope(proj(attn->wk, kv)).repeat_interleave(h / kv, 1);
  at::Tensor v = proj(attn->wv, kv).repeat_interleave(h / kv, 1);
  at::Tensor scores = q.matmul(k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
  scores.masked_fill_(at::ones({t, t}, at::kBool).triu(1), -INFINITY);
  at::Tensor o = scores.softmax(-1).matmul(v).transpose(1, 2).reshape({b, t, h * d});
  at::Tensor ref = o.matmul(attn->wo->weight.to(at::kDouble).t());
  EXPECT_CLOSE(y, ref.to(at::kFloat), 1e-5);
}

TEST(TransformerTest, ShapesAndParameterCounts) {
  ModelConfig m = small_model();
  MoEConfig e = small_moe();
  Transformer model(m, e);
  at::Tensor tokens = at::randint(0, m.vocab_size, {2, 7}, at::kLong);
  ForwardOutput out = model->forward(tokens);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 7, m.vocab_size}));
  EXPECT_EQ(out.tokens_per_expert.size(), 2u);  // layers 1 and 2 are MoE
  for (const auto& t : out.tokens_per_expert) EXPECT_EQ(t.sum().item<int64_t>(), 2 * 7 * e.top_k);
  EXPECT_EQ(out.aux_loss.dim(), 0);
  ParameterCount built = model->parameter_count(), planned = count_parameters(m, e);
  EXPECT_EQ(built.total, planned.total);
  EXPECT_EQ(built.active_per_token, planned.active_per_token);
  const int64_t expert = 3 * m.d_model * e.expert_hidden;
  EXPECT_EQ(built.total - built.active_per_token, 2 * (e.num_experts - e.top_k) * expert);
}

// Loading tensors: a missing one, a wrong shape, and a tensor this model lacks (a checkpoint of a
// deeper model) are all refused, and a refused load changes nothing.
TEST(TransformerTest, LoadStateTensorsRefusesAnyMismatchAndCopiesNothingThen) {
  Transformer small(small_model(), small_moe());
  ModelConfig deeper_config = small_model();
  deeper_config.n_layers = 4;
  Transformer deeper(deeper_config, small_moe());
  const at::Tensor before = small->head.detach().clone();
  try {
    small->load_state_tensors(deeper->state_tensors(), "ckpt");
    ADD_FAILURE() << "a deeper model's tensors were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'ckpt' holds tensor 'blocks.3."), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(at::equal(small->head.detach(), before));
  EXPECT_THROW(deeper->load_state_tensors(small->state_tensors(), "ckpt"), Error);
  Transformer twin(small_model(), small_moe());
  small->load_state_tensors(twin->state_tensors(), "twin");
  EXPECT_TRUE(at::equal(small->head.detach(), twin->head.detach()));
}

TEST(TransformerTest, TiedEmbeddingsShareOneMatrix) {
  ModelConfig m = small_model();
  m.tie_embeddings = true;
  Transformer model(m, small_moe());
  EXPECT_TRUE(model->head.is_same(model->embed->weight));
  EXPECT_EQ(model->named_parameters().find("head"), nullptr);
  EXPECT_EQ(model->parameter_count().total, count_parameters(m, small_moe()).total);
  ModelConfig untied = small_model();
  EXPECT_EQ(count_parameters(untied, small_moe()).total - count_parameters(m, small_moe()).total,
            m.vocab_size * m.d_model);
}

TEST(TransformerTest, FlopsPerTokenCountsMatrixParametersAndAttention) {
  ModelConfig m = small_model();
  MoEConfig e = small_moe();
  const ParameterCount c = count_parameters(m, e);
  const double expected =
      6.0 * (c.active_per_token - m.vocab_size * m.d_model) + 6.0 * m.n_layers * 16 * m.d_model;
  EXPECT_DOUBLE_EQ(training_flops_per_token(m, e, 16), expected);
}

TEST(TransformerTest, FutureTokensDoNotChangePastLogits) {
  at::manual_seed(0);
  Transformer model(small_model(), small_moe());
  model->reset_parameters(7);
  at::Tensor a = at::randint(0, 257, {1, 12}, at::kLong);
  at::Tensor b = a.clone();
  b[0][8] = (a[0][8].item<int64_t>() + 1) % 257;
  b[0][11] = (a[0][11].item<int64_t>() + 5) % 257;
  at::NoGradGuard g;
  at::Tensor la = model->forward(a).logits, lb = model->forward(b).logits;
  EXPECT_TRUE(at::allclose(la.narrow(1, 0, 8), lb.narrow(1, 0, 8), 1e-6, 1e-6));
  EXPECT_FALSE(at::allclose(la.narrow(1, 8, 1), lb.narrow(1, 8, 1), 1e-6, 1e-6));
}

TEST(TransformerTest, NormHeadUsesUnitRowsWithoutGradientThroughTheNorm) {
  ModelConfig m = small_model();
  m.n_layers = 1;
  m.first_k_dense = 1;
  Transformer model(m, small_moe());
  {
    at::NoGradGuard g;
    model->head.mul_(5.0);  // rescaling the head must not change the logits
  }
  at::Tensor tokens = at::randint(0, 257, {1, 5}, at::kLong);
  at::Tensor l1 = model->forward(tokens).logits.detach();
  {
    at::NoGradGuard g;
    model->head.mul_(0.1);
  }
  at::Tensor l2 = model->forward(tokens).logits;
  EXPECT_TRUE(at::allclose(l1, l2, 1e-5, 1e-5));
  // With the norm detached, the gradient is the plain gradient of (head / const): it is not
  // orthogonal to the rows, unlike the gradient through a normalisation.
  l2.sum().backward();
  at::Tensor g = model->head.grad();
  at::Tensor radial = (g * model->head).sum(1).abs().sum();
  EXPECT_GT(radial.item<double>(), 1e-6);
}

TEST(TransformerTest, Bf16ComputeKeepsFp32MasterWeights) {
  Transformer model(small_model(), small_moe());
  model->set_compute_dtype(at::kBFloat16);
  at::Tensor tokens = at::randint(0, 257, {2, 6}, at::kLong);
  ForwardOutput out = model->forward(tokens);
  EXPECT_EQ(out.logits.scalar_type(), at::kFloat);
  out.logits.mean().backward();
  for (const auto& p : model->parameters()) {
    EXPECT_EQ(p.scalar_type(), at::kFloat);
    if (p.grad().defined()) EXPECT_EQ(p.grad().scalar_type(), at::kFloat);
  }
}

// A step's micro-batches inside a WeightCastScope: one cast per master weight for all of them,
// and the same fp32 gradients, bit for bit, as casting in every forward and letting autograd
// accumulate.
TEST(WeightCastScopeTest, MicroBatchesShareOneCastPerWeightAndGiveTheSameGradients) {
  for (const char* head : {"plain", "NormHead", "tied"}) {
    SCOPED_TRACE(head);
    ModelConfig m = small_model();
    m.norm_head = std::string(head) == "NormHead";
    m.tie_embeddings = std::string(head) == "tied";
    Transformer plain(m, small_moe()), scoped(m, small_moe());
    plain->reset_parameters(3);
    scoped->reset_parameters(3);
    plain->set_compute_dtype(at::kBFloat16);
    scoped->set_compute_dtype(at::kBFloat16);
    at::manual_seed(11);
    const at::Tensor tokens = at::randint(0, m.vocab_size, {3, 2, 8}, at::kLong);
    auto micro_batch = [&](Transformer& model, int64_t i) {
      ForwardOutput out = model->forward(tokens[i]);
      at::Tensor ce =
          at::cross_entropy_loss(out.logits.reshape({-1, m.vocab_size}), tokens[i].reshape(-1));
      ((ce + 0.01 * out.aux_loss + 1e-3 * out.z_loss) / 3.0).backward();
      return ce.item<double>();
    };
    for (int64_t i = 0; i < 3; ++i) micro_batch(plain, i);
    {
      WeightCastScope casts;
      EXPECT_TRUE(WeightCastScope::active());
      for (int64_t i = 0; i < 3; ++i) micro_batch(scoped, i);
      // Per block: two norms, wq, wk, wv, wo and two FFN matrices (the dense block), or the
      // routed experts' two and the shared experts' two (the MoE blocks); then the final norm
      // and a plain head (NormHead computes its weight; a tied one is cast as before, so that
      // its two gradients add up in the same order). The embedding and the fp32 router are not
      // cast.
      EXPECT_EQ(casts.cached(), 8 + 2 * 10 + 1 + (std::string(head) == "plain" ? 1 : 0));
      EXPECT_THROW(WeightCastScope nested, Error);
    }
    EXPECT_FALSE(WeightCastScope::active());
    for (const auto& p : plain->named_parameters()) {
      const at::Tensor& expected = p.value().grad();
      const at::Tensor& got = scoped->named_parameters()[p.key()].grad();
      ASSERT_TRUE(expected.defined()) << p.key();
      ASSERT_TRUE(got.defined()) << p.key();
      EXPECT_EQ(got.scalar_type(), at::kFloat) << p.key();
      EXPECT_EQ(got.strides(), expected.strides()) << p.key();
      EXPECT_TRUE(at::equal(got, expected)) << p.key();
    }
  }
}

// b, whose backward gives `a` no gradient at all (an undefined tensor).
struct SecondOnly : torch::autograd::Function<SecondOnly> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor&,
                            const at::Tensor& b) {
    return b.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {at::Tensor(), grads[0]};
  }
};

// Only parameters are kept: not weights computed without gradients, nor casts made in
// inference mode (they could not be saved for a backward). A cast whose consumer returns no
// gradient leaves .grad() undefined, as autograd would.
TEST(WeightCastScopeTest, KeepsOnlyParametersAndAddsNoGradientWhereNoneCame) {
  at::Tensor w = at::randn({4, 3}).requires_grad_(true);
  WeightCastScope casts;
  {
    at::NoGradGuard no_grad;
    const at::Tensor computed = w * 2.0;  // a leaf here, as NormHead's rows are in evaluation
    EXPECT_TRUE(at::equal(compute_weight(computed, at::kBFloat16), computed.to(at::kBFloat16)));
  }
  {
    c10::InferenceMode inference;
    EXPECT_TRUE(at::equal(compute_weight(w, at::kBFloat16), w.detach().to(at::kBFloat16)));
  }
  EXPECT_EQ(casts.cached(), 0);
  const at::Tensor cast = compute_weight(w, at::kBFloat16);
  EXPECT_EQ(casts.cached(), 1);
  const at::Tensor other = at::randn({4, 3}).requires_grad_(true);
  SecondOnly::apply(cast, other).sum().backward();
  EXPECT_TRUE(other.grad().defined());
  EXPECT_FALSE(w.grad().defined());
}

// A master weight changed in place inside the scope (by whoever) is cast again, and the
// scope's casts follow the compute dtype asked for.
TEST(WeightCastScopeTest, AWeightChangedInPlaceIsCastAgain) {
  at::Tensor w = at::randn({4, 3}).requires_grad_(true);
  WeightCastScope casts;
  const at::Tensor first = compute_weight(w, at::kBFloat16);
  EXPECT_TRUE(at::equal(first, w.detach().to(at::kBFloat16)));
  EXPECT_TRUE(compute_weight(w, at::kFloat).is_same(w));  // no cast needed, none kept
  EXPECT_EQ(casts.cached(), 1);
  {
    at::NoGradGuard no_grad;
    w.mul_(2.0);
  }
  const at::Tensor second = compute_weight(w, at::kBFloat16);
  EXPECT_TRUE(at::equal(second, w.detach().to(at::kBFloat16)));
  EXPECT_FALSE(at::equal(first, second));
  EXPECT_EQ(casts.cached(), 1);
  // The gradient reaches the master in fp32 through either cast.
  (first.to(at::kFloat).sum() + second.to(at::kFloat).sum()).backward();
  EXPECT_TRUE(at::equal(w.grad(), at::full({4, 3}, 2.0f)));
  // So does the fused optimizer's update (LibTorch's fused kernel bumps no version counter;
  // AdamW does it after the kernel).
  AdamW opt({{"w", w}}, AdamWOptions{});
  opt.step(0.1);
  EXPECT_TRUE(at::equal(compute_weight(w, at::kBFloat16), w.detach().to(at::kBFloat16)));
  EXPECT_FALSE(at::equal(compute_weight(w, at::kBFloat16), second));
}

// Sampling: ids the caller cannot decode are never drawn, a temperature too small to divide by
// is greedy, and non-finite weights are a named error.
TEST(SampleTest, VocabLimitTinyTemperatureAndNonFiniteWeights) {
  ModelConfig m = small_model();
  m.vocab_size = 300;
  Transformer model(m, small_moe());
  model->reset_parameters(5);
  const std::vector<int32_t> prompt{72, 105};
  SampleOptions o;
  o.max_new_tokens = 100;
  o.temperature = 100.0;  // near uniform over all 300 ids
  auto above = [](const std::vector<int32_t>& ids) {
    return std::count_if(ids.begin(), ids.end(), [](int32_t id) { return id >= 257; });
  };
  EXPECT_GT(above(sample(model, prompt, m.max_seq_len, o)), 0);
  o.vocab_limit = 257;
  EXPECT_EQ(above(sample(model, prompt, m.max_seq_len, o)), 0);

  SampleOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 8;
  std::vector<int32_t> streamed;
  SampleOptions watched = greedy;
  watched.on_token = [&](int32_t id) { streamed.push_back(id); };
  const auto expected = sample(model, prompt, m.max_seq_len, watched);
  EXPECT_EQ(streamed, expected);  // each id as it was drawn, in order
  for (const double t : {1e-307, 2.3e-308, 4.9e-324}) {
    SampleOptions tiny = greedy;
    tiny.temperature = t;
    EXPECT_EQ(sample(model, prompt, m.max_seq_len, tiny), expected) << t;
  }

  {
    at::NoGradGuard no_grad;
    model->head[3][0] = std::nan("");
  }
  try {
    sample(model, prompt, m.max_seq_len, greedy);
    ADD_FAILURE() << "NaN weights gave tokens";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[generate] the model's logits after 2 tokens are not "
                                         "finite"),
              std::string::npos)
        << e.what();
  }
}

// Bad arguments are named "[generate]" errors before any forward pass, not LibTorch's indexing
// errors from deep inside the model.
TEST(SampleTest, BadPromptsAndOptionsAreNamed) {
  const ModelConfig m = small_model();
  Transformer model(m, small_moe());
  auto error_of = [&](const std::vector<int32_t>& prompt, int64_t max_seq_len,
                      const SampleOptions& o) {
    return test_support::error_of([&] { sample(model, prompt, max_seq_len, o); });
  };
  const SampleOptions ok;
  const int32_t v = static_cast<int32_t>(m.vocab_size);
  EXPECT_NE(error_of({1, v}, m.max_seq_len, ok)
                .find("[generate] prompt token 1 is id " + std::to_string(v) +
                      ", outside the model's vocabulary [0, " + std::to_string(v) + ")"),
            std::string::npos);
  EXPECT_NE(error_of({-1}, m.max_seq_len, ok).find("prompt token 0 is id -1"), std::string::npos);
  EXPECT_NE(error_of({1}, 0, ok).find("[generate] max_seq_len must be >= 1, got 0"),
            std::string::npos);
  SampleOptions cold;
  cold.temperature = -0.5;
  EXPECT_NE(error_of({1}, m.max_seq_len, cold).find("temperature must be >= 0"), std::string::npos);
  cold.temperature = std::nan("");
  EXPECT_NE(error_of({1}, m.max_seq_len, cold).find("temperature must be >= 0"), std::string::npos);
  SampleOptions top;
  top.top_k = -2;
  EXPECT_NE(error_of({1}, m.max_seq_len, top).find("must be >= 0"), std::string::npos);
}

// The forward pass names bad token tensors instead of failing inside the embedding or a reshape.
TEST(TransformerTest, BadTokenTensorsAreNamed) {
  const ModelConfig m = small_model();
  Transformer model(m, small_moe());
  auto error_of = [&](const at::Tensor& tokens) {
    return test_support::error_of([&] { model->forward(tokens); });
  };
  EXPECT_NE(error_of(at::zeros({8}, at::kLong)).find("[model] tokens must be [batch, seq]"),
            std::string::npos);
  EXPECT_NE(error_of(at::zeros({1, 4})).find("int64 (or int32) ids, got Float"), std::string::npos);
  EXPECT_NE(error_of(at::zeros({1, m.max_seq_len + 1}, at::kLong))
                .find("more than model.max_seq_len (" + std::to_string(m.max_seq_len) + ")"),
            std::string::npos);
  at::Tensor bad = at::zeros({2, 4}, at::kLong);
  bad[1][2] = m.vocab_size + 3;
  EXPECT_NE(error_of(bad).find("[model] token ids must be in [0, model.vocab_size = " +
                               std::to_string(m.vocab_size) + "), got 0 to " +
                               std::to_string(m.vocab_size + 3)),
            std::string::npos)
      << error_of(bad);
  EXPECT_EQ(model->forward(at::zeros({2, 4}, at::kInt)).logits.size(2), m.vocab_size);
}

}  // namespace
}  // namespace hetmoe
