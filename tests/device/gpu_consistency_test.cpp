// Every MoE operator on each GPU backend equals the CPU backend on the same inputs, values and
// gradients (the test-backend-ops idea). Skips cleanly where no GPU is visible.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "hetmoe/device/registry.h"
#include "hetmoe/ops/moe_ops.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

const Backend* first_gpu() {
  for (const Backend* b : backends())
    if (b->kind() != BackendKind::CPU && b->available()) return b;
  return nullptr;
}

struct Outputs {
  at::Tensor out, gx, gw13, gw2, glogits;
};

Outputs run_layer(const at::Tensor& x0, const at::Tensor& logits0, const at::Tensor& w130,
                  const at::Tensor& w20, const at::Tensor& go0, c10::Device dev, int64_t k) {
  // Fresh leaves on `dev`, never the caller's tensors.
  auto leaf = [&](const at::Tensor& t) {
    return t.to(dev, false, /*copy=*/true).requires_grad_(true);
  };
  at::Tensor x = leaf(x0), logits = leaf(logits0), w13 = leaf(w130), w2 = leaf(w20);
  RouteResult r = ops::route(logits, RouteParams{k, false, true});
  PermuteResult p = ops::permute(x, r.expert_index, w13.size(0));
  at::Tensor y = ops::expert_ffn(p.permuted, w13, w2, p.tokens_per_expert);
  at::Tensor out = ops::unpermute(y, r.expert_weight, p, x.size(0));
  (out * go0.to(dev)).sum().backward();
  return {out, x.grad(), w13.grad(), w2.grad(), logits.grad()};
}

TEST(GpuConsistencyTest, MoEOperatorsMatchTheCpuBackend) {
  const Backend* gpu = first_gpu();
  if (!gpu)
    GTEST_SKIP() << "no GPU visible to this build (CUDA backend "
                 << (backends().front()->kind() == BackendKind::CPU ? "not built" : "built") << ")";
  at::manual_seed(11);
  const int64_t n = 300, h = 64, e = 16, k = 4, f = 48;
  at::Tensor x = at::randn({n, h}), logits = at::randn({n, e});
  at::Tensor w13 = at::randn({e, h, 2 * f}) * 0.1, w2 = at::randn({e, f, h}) * 0.1;
  at::Tensor go = at::randn({n, h});
  // fp32 on the GPU must not use TF32 for this comparison.
  at::globalContext().setAllowTF32CuBLAS(false);
  Outputs cpu = run_layer(x, logits, w13, w2, go, c10::Device(c10::kCPU), k);
  Outputs dev = run_layer(x, logits, w13, w2, go, gpu->torch_device(0), k);
  EXPECT_CLOSE(dev.out, cpu.out, 1e-5);
  EXPECT_CLOSE(dev.gx, cpu.gx, 1e-5);
  EXPECT_CLOSE(dev.gw13, cpu.gw13, 1e-5);
  EXPECT_CLOSE(dev.gw2, cpu.gw2, 1e-5);
  EXPECT_CLOSE(dev.glogits, cpu.glogits, 1e-5);
}

}  // namespace
}  // namespace hetmoe
