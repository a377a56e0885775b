// Example: an hetmoe MoE layer inside a LibTorch model of one's own, trained with LibTorch's own
// Adam on a synthetic piecewise-linear regression. It shows what a research model needs from
// hetmoe: build the layer from an MoEConfig, call forward(x, &stats), add the router losses to the
// objective, read the expert load. It checks its own outcome and exits 1 when the model did not
// learn the task (docs/embedding.md).
//
//   moe_layer_example [DEVICE]    DEVICE: auto (default) | cpu | cuda[:i] | rocm[:i]
#include <hetmoe/hetmoe.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

namespace {

constexpr int64_t kIn = 16;      // input features
constexpr int64_t kOut = 8;      // regression targets
constexpr int64_t kDModel = 32;  // the width the MoE layer works at
constexpr int64_t kRegions = 4;  // the target map depends on the signs of x[:, 0] and x[:, 1]
constexpr int64_t kBatch = 256;
constexpr int kSteps = 300;
constexpr double kLr = 5e-3;
constexpr uint64_t kSeed = 20240611;

// The task: y = x W_common + x W_region(x), region = 2 * (x0 > 0) + (x1 > 0). Half of the target
// variance is a map all inputs share (the residual path and the shared expert can learn it), the
// other half is one of four region-specific maps: a piecewise function whose pieces routing can
// hand to different experts. Both halves are fixed random matrices drawn from the seed.
struct Task {
  torch::Tensor w_common;  // [kIn, kOut]
  torch::Tensor w_region;  // [kRegions, kIn, kOut]

  explicit Task(const torch::Device& device) {
    // Entries N(0, 1 / (2 kIn)): each half contributes variance 1/2 per target, so E[y^2] = 1
    // and the first loss of a freshly initialised model (outputs near 0) is about 1.
    const double scale = 1.0 / std::sqrt(2.0 * kIn);
    w_common = (torch::randn({kIn, kOut}) * scale).to(device);
    w_region = (torch::randn({kRegions, kIn, kOut}) * scale).to(device);
  }

  static torch::Tensor region_of(const torch::Tensor& x) {
    return (x.select(1, 0) > 0).to(torch::kLong) * 2 + (x.select(1, 1) > 0).to(torch::kLong);
  }

  torch::Tensor target(const torch::Tensor& x) const {
    const torch::Tensor per_row = w_region.index_select(0, region_of(x));  // [N, kIn, kOut]
    return x.matmul(w_common) + torch::bmm(x.unsqueeze(1), per_row).squeeze(1);
  }
};

// A model of one's own: project in, one MoE layer on a residual connection, project out. The MoE
// layer is an ordinary LibTorch module: registered here, it is moved by ->to(), listed by
// parameters() and switched by train()/eval() with the rest of the model.
struct Net : torch::nn::Module {
  explicit Net(const hetmoe::MoEConfig& moe_config)
      : in(register_module("in", torch::nn::Linear(kIn, kDModel))),
        moe(register_module("moe", hetmoe::MoELayer(kDModel, moe_config, /*init_std=*/0.02))),
        out(register_module("out", torch::nn::Linear(kDModel, kOut))) {}

  // x [N, kIn] -> [N, kOut]. The MoE layer takes 2-D input, [tokens, d_model]; a sequence model
  // flattens [B, T, D] to [B * T, D] around it (and passes seq_len = T for the sequence-level
  // balance loss).
  torch::Tensor forward(const torch::Tensor& x, hetmoe::MoEStats* stats) {
    torch::Tensor h = in->forward(x);
    h = h + moe->forward(h, stats);
    return out->forward(h);
  }

  torch::nn::Linear in;
  hetmoe::MoELayer moe;
  torch::nn::Linear out;
};

// "[37 30 35 ...]" from an [E] integer tensor on any device.
std::string format_counts(const torch::Tensor& counts) {
  const torch::Tensor c = counts.to(torch::kCPU, torch::kLong).contiguous();
  std::string s = "[";
  for (int64_t i = 0; i < c.numel(); ++i)
    s += (i ? " " : "") + std::to_string(c.data_ptr<int64_t>()[i]);
  return s + "]";
}

int run(const std::string& device_spec) {
  // "auto" is the first available GPU backend, else the CPU: the rule of backend.device.
  const torch::Device device = hetmoe::resolve_device(device_spec);
  std::printf("hetmoe %s (backends %s), device %s\n", HETMOE_VERSION_STRING, HETMOE_BACKENDS,
              device.str().c_str());

  hetmoe::MoEConfig moe_config;
  moe_config.num_experts = 8;
  moe_config.top_k = 2;
  moe_config.expert_hidden = 32;
  moe_config.num_shared_experts = 1;
  // aux_loss_coef (0.01) and z_loss_coef (1e-4) keep their defaults; the loss below uses them.

  // One seed fixes the task, the initial weights (the layer draws them from LibTorch's global
  // generator, like torch::nn::Linear) and every batch. Batches are drawn on the CPU and then
  // moved, so they are the same whatever the device.
  torch::manual_seed(kSeed);
  const Task task(device);
  auto net = std::make_shared<Net>(moe_config);
  net->to(device);
  const hetmoe::MoEConfig& moe = net->moe->config();

  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(kLr));
  std::vector<double> losses;  // the task loss (MSE) of every step
  hetmoe::MoEStats stats;
  for (int step = 1; step <= kSteps; ++step) {
    const torch::Tensor x = torch::randn({kBatch, kIn}).to(device);
    const torch::Tensor y = task.target(x);
    const torch::Tensor mse = torch::mse_loss(net->forward(x, &stats), y);
    // The layer returns its router losses unscaled; the model that owns it weighs them in.
    const torch::Tensor loss =
        mse + moe.aux_loss_coef * stats.aux_loss + moe.z_loss_coef * stats.z_loss;
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    losses.push_back(mse.item<double>());
    if (step == 1 || step % 50 == 0)
      std::printf("step %3d | mse %.4f | aux %.4f | z %.4f\n", step, losses.back(),
                  stats.aux_loss.item<double>(), stats.z_loss.item<double>());
  }
  // (token, slot) pairs per expert: kBatch tokens x top-2 = 512 in all.
  std::printf("tokens per expert, last batch: %s\n",
              format_counts(stats.tokens_per_expert).c_str());

  {
    // Where each region's inputs go after training (shown, not checked: how sharply the router
    // separates the regions depends on the seed and the number of steps).
    torch::NoGradGuard no_grad;
    net->eval();
    const torch::Tensor x = torch::randn({4096, kIn}).to(device);
    const torch::Tensor region = Task::region_of(x);
    std::printf("held-out mse %.4f; expert share by region (%% of slots):\n",
                torch::mse_loss(net->forward(x, nullptr), task.target(x)).item<double>());
    for (int64_t r = 0; r < kRegions; ++r) {
      const torch::Tensor rows = torch::nonzero(region == r).squeeze(1);
      hetmoe::MoEStats s;
      net->forward(x.index_select(0, rows), &s);
      const torch::Tensor share =
          s.tokens_per_expert.to(torch::kCPU, torch::kDouble) * 100.0 / (rows.numel() * moe.top_k);
      std::string line;
      for (int64_t e = 0; e < share.numel(); ++e) {
        char cell[16];
        std::snprintf(cell, sizeof cell, " %3.0f", share[e].item<double>());
        line += cell;
      }
      std::printf("  region %lld (x0 %s 0, x1 %s 0):%s\n", static_cast<long long>(r),
                  r >= 2 ? ">" : "<=", r % 2 ? ">" : "<=", line.c_str());
    }
  }

  // The check: the mean MSE of the last 10 steps must be below half the first step's. The first
  // loss is about 1 (E[y^2], plus the untrained output's own variance). A model that learned only
  // the shared linear map leaves the unexplained 3/4 of the region half, 0.375, already below
  // 0.5; the experts' nonlinearity and the routing take it further. So the margin holds on any
  // device, while a broken layer (no gradient through the experts or the residual, NaNs) fails it.
  const double first = losses.front();
  const double last10 = std::accumulate(losses.end() - 10, losses.end(), 0.0) / 10.0;
  std::printf("first mse %.4f, mean of the last 10 steps %.4f (%.0f%% of the first)\n", first,
              last10, 100.0 * last10 / first);
  if (!(last10 < 0.5 * first)) {  // written this way so that a NaN fails too
    std::fprintf(stderr, "moe_layer_example: FAILED: mse %.4f is not below half the first (%.4f)\n",
                 last10, first);
    return 1;
  }
  std::printf("moe_layer_example: OK\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc > 1 ? argv[1] : "auto");
  } catch (const hetmoe::Error& e) {
    // hetmoe's messages are one line with a "[component]" prefix, e.g. "[device] ...".
    std::fprintf(stderr, "moe_layer_example: %s\n", e.what());
  } catch (const std::exception& e) {
    // LibTorch's c10::Error and everything else.
    std::fprintf(stderr, "moe_layer_example: error: %s\n", e.what());
  }
  return 1;
}
