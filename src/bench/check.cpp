#include "hetmoe/bench/check.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/model/transformer.h"
#include "hetmoe/ops/moe_ops.h"
#include "hetmoe/train/trainer.h"

namespace hetmoe {
namespace {

// One operator's results on one side, as host fp32 tensors, by name ("output", "grad input").
using OpResults = std::map<std::string, at::Tensor>;
// Per operator, in the order they were run.
using SideResults = std::vector<std::pair<std::string, OpResults>>;

// What every side runs its operators on: host fp32 tensors computed once from the initial model.
struct FirstBatch {
  at::Tensor embedded;  // [B, T, D] the embedding of the first batch
  at::Tensor normed;    // attention norm of it (the attention's input)
  at::Tensor hidden;    // [N, D] the first MoE layer's input
  at::Tensor expert_index, expert_weight, tokens_per_expert;
  at::Tensor permuted, expert_out;  // [R, D] rows in expert order, the experts' output
};

// The ops' inputs are leaves on the side's device (fp32, requiring grad). `fn` casts as the model
// does and returns named outputs; floating outputs are back-propagated with fixed random
// gradients, and each leaf's gradient is recorded as "grad <leaf name>".
template <typename Fn>
OpResults run_op(c10::Device device, const std::vector<std::pair<std::string, at::Tensor>>& leaves,
                 Fn&& fn) {
  std::vector<at::Tensor> inputs;
  for (const auto& [name, t] : leaves) inputs.push_back(t.to(device).requires_grad_(true));
  std::vector<std::pair<std::string, at::Tensor>> outputs = fn(inputs);
  OpResults r;
  std::vector<at::Tensor> diff_out, grad_out;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (const auto& [name, t] : outputs) {
    r[name] = t.detach().to(at::kCPU);
    if (!t.is_floating_point() || !t.requires_grad()) continue;
    diff_out.push_back(t);
    grad_out.push_back(at::randn(t.sizes(), gen, at::TensorOptions().dtype(at::kFloat))
                           .to(t.device(), t.scalar_type()));
  }
  if (!diff_out.empty()) {
    auto grads = torch::autograd::grad(diff_out, inputs, grad_out, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i)
      if (grads[i].defined()) r["grad " + leaves[i].first] = grads[i].to(at::kCPU, at::kFloat);
  }
  for (auto& [name, t] : r)
    if (t.is_floating_point()) t = t.to(at::kFloat);
  return r;
}

BlockImpl& block(Transformer& model, size_t i) {
  return *model->blocks[i]->as<BlockImpl>();
}

size_t first_moe_block(Transformer& model) {
  for (size_t i = 0; i < model->blocks->size(); ++i)
    if (block(model, i).is_moe()) return i;
  HETMOE_FAIL("check", "the model has no MoE layer (model.first_k_dense >= model.n_layers)");
}

FirstBatch first_batch(const Config& c) {
  at::NoGradGuard no_grad;
  ops::KernelImplGuard native(ops::KernelImpl::Native);
  Transformer source(c.model, c.moe);
  source->reset_parameters(static_cast<uint64_t>(c.train.seed));
  // The same windows as the trainer's first step.
  TokenDataset data(c.data.path);
  const int64_t len = c.train.seq_len + 1;
  at::Tensor buf = at::empty({c.train.micro_batch, len}, at::kInt);
  data.sample_windows(Split::Train, c.train.micro_batch, len, static_cast<uint64_t>(c.train.seed),
                      0, buf.data_ptr<int32_t>());
  FirstBatch f;
  f.embedded = source->embed->forward(buf.narrow(1, 0, c.train.seq_len).to(at::kLong));
  f.normed = block(source, 0).attn_norm->forward(f.embedded);
  BlockImpl& moe_block = block(source, first_moe_block(source));
  f.hidden = moe_block.ffn_norm->forward(f.embedded).reshape({-1, c.model.d_model});
  MoELayerImpl& moe = *moe_block.moe;
  RouteResult r = ops::route(ops::linear(f.hidden, moe.router), route_params(c.moe));
  f.expert_index = r.expert_index;
  f.expert_weight = r.expert_weight;
  PermuteResult p = ops::permute(f.hidden, r.expert_index, c.moe.num_experts);
  f.tokens_per_expert = p.tokens_per_expert;
  f.permuted = p.permuted;
  f.expert_out = ops::expert_ffn(p.permuted, moe.w13, moe.w2, p.tokens_per_expert);
  return f;
}

// Every operator of the first batch on one side's (initial) model.
SideResults run_ops(const Config& c, Transformer& model, c10::Device device, at::ScalarType dtype,
                    const FirstBatch& in) {
  SideResults out;
  auto compute = [dtype](const at::Tensor& t) { return t.to(dtype); };
  BlockImpl& b0 = block(model, 0);
  out.emplace_back("norm", run_op(device, {{"input", in.embedded}}, [&](auto& x) {
                     return std::vector<std::pair<std::string, at::Tensor>>{
                         {"output", b0.attn_norm->forward(compute(x[0]))}};
                   }));
  out.emplace_back("attention", run_op(device, {{"input", in.normed}}, [&](auto& x) {
                     return std::vector<std::pair<std::string, at::Tensor>>{
                         {"output", b0.attn->forward(compute(x[0]))}};
                   }));
  MoELayerImpl& moe = *block(model, first_moe_block(model)).moe;
  const RouteParams params = route_params(c.moe);
  out.emplace_back(
      "router", run_op(device, {{"input", in.hidden}}, [&](auto& x) {
        // The router runs in fp32 whatever the compute dtype, as in the model.
        RouteResult r =
            ops::route(ops::linear(compute(x[0]).to(moe.router.scalar_type()), moe.router), params);
        return std::vector<std::pair<std::string, at::Tensor>>{
            {"scores", r.scores}, {"weights", r.expert_weight}, {"choice", r.expert_index}};
      }));
  const at::Tensor index = in.expert_index.to(device);
  const int64_t e = c.moe.num_experts;
  out.emplace_back("permute", run_op(device, {{"input", in.hidden}}, [&](auto& x) {
                     return std::vector<std::pair<std::string, at::Tensor>>{
                         {"output", ops::permute(compute(x[0]), index, e).permuted}};
                   }));
  const at::Tensor counts = in.tokens_per_expert.to(device);
  out.emplace_back("experts", run_op(device,
                                     {{"input", in.permuted},
                                      {"w13", moe.w13.detach().to(at::kCPU)},
                                      {"w2", moe.w2.detach().to(at::kCPU)}},
                                     [&](auto& x) {
                                       return std::vector<std::pair<std::string, at::Tensor>>{
                                           {"output", ops::expert_ffn(compute(x[0]), compute(x[1]),
                                                                      compute(x[2]), counts)}};
                                     }));
  const PermuteResult perm = ops::permute(compute(in.hidden.to(device)), index, e);
  out.emplace_back(
      "unpermute",
      run_op(device, {{"input", in.expert_out}, {"weights", in.expert_weight}}, [&](auto& x) {
        return std::vector<std::pair<std::string, at::Tensor>>{
            {"output", ops::unpermute(compute(x[0]), x[1], perm)}};
      }));
  return out;
}

struct SideRun {
  SideResults ops;
  std::vector<double> losses;
};

SideRun run_side(const Config& config, const CheckSide& side, const FirstBatch& batch,
                 const CheckOptions& options) {
  Config c = config;
  c.backend.device = side.device;
  c.backend.dtype = side.dtype;
  // train.steps stays: the learning-rate schedule is the configured run's.
  c.train.save_final = false;
  c.train.save_every = 0;
  const TempDir run_dir("hetmoe-check");
  c.run.out_dir = run_dir.path();
  ops::KernelImplGuard kernels(side.kernels);
  TrainerOptions fresh;
  fresh.overwrite = true;
  Trainer trainer(c, fresh);
  Transformer& model = trainer.model();
  SideRun run;
  const c10::Device device = model->parameters().front().device();
  run.ops = run_ops(c, model, device, side.dtype == "bf16" ? at::kBFloat16 : at::kFloat, batch);
  if (options.progress) options.progress(side.label() + ": operators done");
  for (int64_t s = 1; s <= options.steps; ++s) {
    run.losses.push_back(trainer.train_step());
    if (options.progress && (s % 10 == 0 || s == options.steps)) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s: step %lld/%lld loss %.6f", side.label().c_str(),
                    static_cast<long long>(s), static_cast<long long>(options.steps),
                    run.losses.back());
      options.progress(buf);
    }
  }
  return run;
}

}  // namespace

std::string CheckSide::label() const {
  return device + " " + dtype + " " + ops::to_string(kernels);
}

CheckReport check_alignment(const Config& config, const CheckSide& a, const CheckSide& b,
                            const CheckOptions& options) {
  validate(config);
  HETMOE_CHECK(options.steps >= 1, "check", "--steps must be >= 1");
  HETMOE_CHECK(a.label() != b.label(), "check", "both sides are ", a.label(),
               "; compare two backends, two dtypes or two kernel implementations");
  const FirstBatch batch = first_batch(config);
  const SideRun ra = run_side(config, a, batch, options);
  const SideRun rb = run_side(config, b, batch, options);

  CheckReport report;
  report.a = a.label();
  report.b = b.label();
  for (size_t i = 0; i < ra.ops.size(); ++i) {
    const auto& [op, results] = ra.ops[i];
    const OpResults& other = rb.ops[i].second;
    for (const auto& [name, ta] : results) {
      const at::Tensor& tb = other.at(name);
      if (!ta.is_floating_point()) {
        // Integer outputs (the routing choice): how many entries agree.
        report.router_agreement = ta.eq(tb).to(at::kDouble).mean().item<double>();
        continue;
      }
      OpDifference d;
      d.op = op;
      d.tensor = name;
      const at::Tensor diff = (ta.to(at::kDouble) - tb.to(at::kDouble));
      d.max_abs = diff.abs().max().item<double>();
      const double norm = ta.to(at::kDouble).norm().item<double>();
      d.relative = diff.norm().item<double>() / std::max(norm, 1e-30);
      d.within = std::isfinite(d.relative) && d.relative <= options.op_tolerance;
      report.ops_within = report.ops_within && d.within;
      report.ops.push_back(d);
    }
  }
  report.loss_a = ra.losses;
  report.loss_b = rb.losses;
  compare_losses(report, options.tolerance, options.loss_window);
  return report;
}

void compare_losses(CheckReport& report, double tolerance, int64_t window) {
  HETMOE_CHECK(window >= 1, "check", "the loss window must be at least 1 step, got ", window);
  HETMOE_CHECK(report.loss_a.size() == report.loss_b.size(), "check", "the sides ran ",
               report.loss_a.size(), " and ", report.loss_b.size(), " steps");
  report.relative.clear();
  report.first_step_over = 0;
  report.max_relative = 0;
  const auto w = static_cast<size_t>(window);
  for (size_t s = 0; s < report.loss_a.size(); ++s) {
    // Summed afresh for each window: a running sum would carry one non-finite loss (or its
    // rounding) into every later window.
    double sum_a = 0, sum_b = 0;
    for (size_t i = s + 1 > w ? s + 1 - w : 0; i <= s; ++i) {
      sum_a += report.loss_a[i];
      sum_b += report.loss_b[i];
    }
    const double rel = std::fabs(sum_a - sum_b) / std::max(std::fabs(sum_a), 1e-30);
    report.relative.push_back(rel);
    report.max_relative = std::max(report.max_relative, std::isfinite(rel) ? rel : INFINITY);
    if (report.first_step_over == 0 && !(rel <= tolerance))
      report.first_step_over = static_cast<int64_t>(s) + 1;
  }
}

}  // namespace hetmoe
