// Microbenchmarks of the four MoE operators through the CPU backend's kernel table, forward and
// forward+backward, at a small shape and a scaled-down Ling-Lite layer (64 experts, top-6).
// HETMOE_BENCH_DEVICE (cpu | cuda | auto, default cpu) and HETMOE_BENCH_DTYPE (fp32 | bf16,
// default fp32) choose where and in what precision the layer runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include "hetmoe/device/registry.h"
#include "hetmoe/ops/moe_ops.h"

namespace {

struct Shape {
  int64_t tokens, hidden, experts, top_k, ffn;
};

// args: tokens, hidden, experts, top_k, expert ffn hidden
Shape shape_of(const benchmark::State& s) {
  return {s.range(0), s.range(1), s.range(2), s.range(3), s.range(4)};
}

at::TensorOptions bench_options() {
  const char* dev = std::getenv("HETMOE_BENCH_DEVICE");
  const char* dtype = std::getenv("HETMOE_BENCH_DTYPE");
  return at::TensorOptions()
      .device(hetmoe::resolve_device(dev ? dev : "cpu"))
      .dtype(dtype && std::string(dtype) == "bf16" ? at::kBFloat16 : at::kFloat);
}

void BM_MoELayer(benchmark::State& state, bool backward) {
  const Shape sh = shape_of(state);
  at::manual_seed(0);
  const at::TensorOptions o = bench_options();
  auto param = [&](std::vector<int64_t> shape, double scale) {
    return (at::randn(shape, o.dtype(at::kFloat)) * scale).to(o).requires_grad_(backward);
  };
  at::Tensor x = param({sh.tokens, sh.hidden}, 1.0);
  at::Tensor router = at::randn({sh.experts, sh.hidden}, o.dtype(at::kFloat)) * 0.02;
  at::Tensor w13 = param({sh.experts, sh.hidden, 2 * sh.ffn}, 0.02);
  at::Tensor w2 = param({sh.experts, sh.ffn, sh.hidden}, 0.02);
  const hetmoe::Backend& backend = hetmoe::backend_for(x);
  for (auto _ : state) {
    auto r = hetmoe::ops::route(at::linear(x.to(at::kFloat), router), {sh.top_k, false, true});
    auto p = hetmoe::ops::permute(x, r.expert_index, sh.experts);
    at::Tensor y = hetmoe::ops::expert_ffn(p.permuted, w13, w2, p.tokens_per_expert);
    at::Tensor out = hetmoe::ops::unpermute(y, r.expert_weight, p, sh.tokens);
    if (backward) out.sum().backward();
    backend.synchronize(0);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  const double flops = 2.0 * 3.0 * sh.tokens * sh.top_k * sh.hidden * sh.ffn * (backward ? 3 : 1);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  state.counters["tokens/s"] = benchmark::Counter(
      static_cast<double>(sh.tokens) * state.iterations(), benchmark::Counter::kIsRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({2048, 256, 8, 2, 512});   // bench-small's layer
  b->Args({1024, 256, 64, 6, 176});  // Ling-Lite's routing (64 experts, top-6) scaled down
  if (const char* dev = std::getenv("HETMOE_BENCH_DEVICE"); dev && std::string(dev) != "cpu")
    b->Args({16384, 2048, 64, 6, 1408});            // the Ling-Lite layer itself (GPU only)
  b->Unit(benchmark::kMillisecond)->UseRealTime();  // GPU work is asynchronous: wall time
}

BENCHMARK_CAPTURE(BM_MoELayer, forward, false)->Apply(shapes);
BENCHMARK_CAPTURE(BM_MoELayer, forward_backward, true)->Apply(shapes);

}  // namespace

BENCHMARK_MAIN();
