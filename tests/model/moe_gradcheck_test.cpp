// The whole MoE layer's gradients (routed experts, shared expert, router, input) against central
// finite differences in double precision on a tiny case. The router's scores are computed in
// fp32 by design, so the router and input gradients get a looser bound than the expert weights.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>

#include "hetmoe/model/layers.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

// d loss / d t[i] for every element of t by central differences.
at::Tensor numeric_grad(at::Tensor t, const std::function<double()>& loss, double eps) {
  at::NoGradGuard no_grad;
  at::Tensor g = at::zeros_like(t);
  at::Tensor flat = t.view(-1), gflat = g.view(-1);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double orig = flat[i].item<double>();
    flat[i] = orig + eps;
    const double up = loss();
    flat[i] = orig - eps;
    const double down = loss();
    flat[i] = orig;
    gflat[i] = (up - down) / (2 * eps);
  }
  return g;
}

TEST(MoEGradcheckTest, LayerGradientsMatchFiniteDifferences) {
  at::manual_seed(4);
  ModelConfig m;
  m.d_model = 4;
  m.init_std = 0.5;
  MoEConfig e;
  e.num_experts = 3;
  e.top_k = 2;
  e.expert_hidden = 3;
  e.num_shared_experts = 1;
  MoELayer layer(m, e);
  layer->to(at::kDouble);
  at::Tensor x = at::randn({5, 4}, at::kDouble).requires_grad_(true);
  at::Tensor probe = at::randn({5, 4}, at::kDouble);

  MoEStats stats;
  at::Tensor out = layer->forward(x, &stats);
  (out * probe).sum().backward();
  auto loss = [&] { return (layer->forward(x) * probe).sum().item<double>(); };

  EXPECT_CLOSE(layer->w13.grad(), numeric_grad(layer->w13, loss, 1e-6), 1e-6);
  EXPECT_CLOSE(layer->w2.grad(), numeric_grad(layer->w2, loss, 1e-6), 1e-6);
  EXPECT_CLOSE(layer->shared->w13->weight.grad(),
               numeric_grad(layer->shared->w13->weight, loss, 1e-6), 1e-6);
  EXPECT_CLOSE(layer->router.grad(), numeric_grad(layer->router, loss, 1e-3), 2e-3);
  EXPECT_CLOSE(x.grad(), numeric_grad(x, loss, 1e-3), 2e-3);
}

}  // namespace
}  // namespace hetmoe
