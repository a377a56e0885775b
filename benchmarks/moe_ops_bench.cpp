// Microbenchmarks of the MoE layer and its operators on one device, with the device's own
// ceilings measured in the same run:
//   MoELayer/hetmoe     route -> permute -> grouped SwiGLU experts -> unpermute (+ shared expert)
//   MoELayer/eager      the same layer written like Hugging Face's Mixtral block (loop over
//                       experts, index_add), the baseline every framework is compared with
//   MoELayer/grouped_mm the same layer calling at::_grouped_mm directly (CUDA, bf16 only)
//   Permute, Unpermute  the data-movement operators alone (GB/s, read + write)
//   Kernel/<op>         each entry of the backend's kernel table alone, forward and backward
//   DenseGemm, Copy     the device's GEMM rate (LibTorch's and the backend's own) and copy
//                       bandwidth: the ceilings
// HETMOE_BENCH_DEVICE (cpu | cuda | auto, default cpu) and HETMOE_BENCH_DTYPE (fp32 | bf16,
// default fp32) choose where and in what precision everything runs. Rates use wall time.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include "hetmoe/device/registry.h"
#include "hetmoe/ops/moe_ops.h"

namespace {

struct Shape {
  int64_t tokens, hidden, experts, top_k, ffn, shared;
};

// args: tokens, hidden, experts, top_k, expert ffn hidden, shared experts
Shape shape_of(const benchmark::State& s) {
  return {s.range(0), s.range(1), s.range(2), s.range(3), s.range(4), s.range(5)};
}

bool on_gpu() {
  const char* dev = std::getenv("HETMOE_BENCH_DEVICE");
  return dev && std::string(dev) != "cpu";
}

at::TensorOptions bench_options() {
  const char* dev = std::getenv("HETMOE_BENCH_DEVICE");
  const char* dtype = std::getenv("HETMOE_BENCH_DTYPE");
  return at::TensorOptions()
      .device(hetmoe::resolve_device(dev ? dev : "cpu"))
      .dtype(dtype && std::string(dtype) == "bf16" ? at::kBFloat16 : at::kFloat);
}

void sync(const at::Tensor& t) {
  hetmoe::backend_for(t).synchronize(0);
}

at::Tensor swiglu(const at::Tensor& h) {
  const int64_t f = h.size(-1) / 2;
  return at::silu(h.narrow(-1, 0, f)) * h.narrow(-1, f, f);
}

enum class Variant { Hetmoe, Eager, GroupedMm };

struct Layer {
  at::Tensor x, router, w13, w2, shared13, shared2;
  Layer(const Shape& sh, bool grad) {
    at::manual_seed(0);
    const at::TensorOptions o = bench_options();
    auto param = [&](std::vector<int64_t> shape, double scale) {
      return (at::randn(shape, o.dtype(at::kFloat)) * scale).to(o).requires_grad_(grad);
    };
    x = param({sh.tokens, sh.hidden}, 1.0);
    router = (at::randn({sh.experts, sh.hidden}, o.dtype(at::kFloat)) * 0.02).requires_grad_(grad);
    w13 = param({sh.experts, sh.hidden, 2 * sh.ffn}, 0.02);
    w2 = param({sh.experts, sh.ffn, sh.hidden}, 0.02);
    const int64_t s = std::max<int64_t>(sh.shared, 1) * sh.ffn;
    shared13 = param({sh.hidden, 2 * s}, 0.02);
    shared2 = param({s, sh.hidden}, 0.02);
  }

  at::Tensor forward(const Shape& sh, Variant v) {
    at::Tensor logits = at::linear(x.to(at::kFloat), router);
    at::Tensor out;
    if (v == Variant::Hetmoe) {
      auto r = hetmoe::ops::route(logits, {sh.top_k, false, true});
      auto p = hetmoe::ops::permute(x, r.expert_index, sh.experts);
      at::Tensor y = hetmoe::ops::expert_ffn(p.permuted, w13, w2, p.tokens_per_expert);
      out = hetmoe::ops::unpermute(y, r.expert_weight, p);
    } else {
      auto [top, index] = logits.softmax(-1).topk(sh.top_k, -1);
      at::Tensor weight = (top / top.sum(-1, true)).to(x.scalar_type());
      if (v == Variant::Eager) {
        out = at::zeros_like(x);
        for (int64_t e = 0; e < sh.experts; ++e) {
          auto where = at::where(index == e);
          at::Tensor tok = where[0], slot = where[1];
          if (tok.numel() == 0) continue;  // a host sync per expert, as in the HF blocks
          at::Tensor y = at::matmul(swiglu(at::matmul(x.index_select(0, tok), w13[e])), w2[e]);
          out = out.index_add(0, tok, y * weight.index({tok, slot}).unsqueeze(1));
        }
      } else {
        at::Tensor flat = index.reshape(-1);
        at::Tensor order = flat.argsort(/*stable=*/true);
        at::Tensor offs = at::bincount(flat, {}, sh.experts).cumsum(0).to(at::kInt);
        at::Tensor rows = at::div(order, sh.top_k, "floor");
        at::Tensor h = at::_grouped_mm(x.index_select(0, rows), w13, offs);
        at::Tensor y = at::_grouped_mm(swiglu(h), w2, offs);
        y = y * weight.reshape(-1).index_select(0, order).unsqueeze(1);
        out = at::zeros_like(x).index_add(0, rows, y);
      }
    }
    if (sh.shared > 0) out = out + at::matmul(swiglu(at::matmul(x, shared13)), shared2);
    return out;
  }
};

void BM_MoELayer(benchmark::State& state, Variant v, bool backward) {
  const Shape sh = shape_of(state);
  if (v == Variant::GroupedMm && (!on_gpu() || bench_options().dtype() != at::kBFloat16)) {
    state.SkipWithError("at::_grouped_mm is benchmarked on CUDA in bf16 only");
    return;
  }
  Layer layer(sh, backward);
  for (auto _ : state) {
    at::Tensor out = layer.forward(sh, v);
    if (backward) out.sum().backward();
    sync(out);
  }
  const double flops =
      2.0 * 3.0 * sh.tokens * (sh.top_k + sh.shared) * sh.hidden * sh.ffn * (backward ? 3 : 1);
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops * state.iterations() / 1e12, benchmark::Counter::kIsRate);
  state.counters["tokens/s"] = benchmark::Counter(
      static_cast<double>(sh.tokens) * state.iterations(), benchmark::Counter::kIsRate);
}

// Permute / unpermute forward alone: bytes = rows read + rows written (indices not counted).
void BM_Permute(benchmark::State& state, bool unpermute) {
  const Shape sh = shape_of(state);
  Layer layer(sh, false);
  auto r =
      hetmoe::ops::route(at::linear(layer.x.to(at::kFloat), layer.router), {sh.top_k, false, true});
  auto p = hetmoe::ops::permute(layer.x, r.expert_index, sh.experts);
  for (auto _ : state) {
    at::Tensor out = unpermute ? hetmoe::ops::unpermute(p.permuted, r.expert_weight, p)
                               : hetmoe::ops::permute(layer.x, r.expert_index, sh.experts).permuted;
    sync(out);
  }
  const double rows = static_cast<double>(sh.tokens) * sh.top_k;
  const double bytes = (rows + (unpermute ? sh.tokens : rows)) * sh.hidden * layer.x.element_size();
  state.counters["GB/s"] =
      benchmark::Counter(bytes * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// Each kernel of the backend's table alone, forward and backward, at the layer shapes.
enum class Op {
  RouteFwd,
  RouteBwd,
  PermuteFwd,
  PermuteBwd,
  ExpertsFwd,
  ExpertsBwd,
  UnpermuteFwd,
  UnpermuteBwd
};

void BM_Kernel(benchmark::State& state, Op op) {
  const Shape sh = shape_of(state);
  Layer layer(sh, false);
  const hetmoe::MoEKernels& k = hetmoe::backend_for(layer.x).kernels();
  hetmoe::RouteParams p;
  p.top_k = sh.top_k;
  at::Tensor logits = at::linear(layer.x.to(at::kFloat), layer.router);
  hetmoe::RouteResult r = k.route_forward(logits, p);
  hetmoe::PermuteResult perm = k.permute_forward(layer.x, r.expert_index, sh.experts, {});
  at::Tensor h;
  at::Tensor y =
      k.expert_ffn_forward(perm.permuted, layer.w13, layer.w2, perm.tokens_per_expert, &h);
  at::Tensor grad_rows = at::randn_like(y), grad_out = at::randn_like(layer.x);
  at::Tensor grad_weight = at::randn_like(r.expert_weight);
  for (auto _ : state) {
    at::Tensor out;
    switch (op) {
      case Op::RouteFwd:
        out = k.route_forward(logits, p).scores;
        break;
      case Op::RouteBwd:
        out = k.route_backward(at::Tensor(), grad_weight, r.scores, r.expert_index, p);
        break;
      case Op::PermuteFwd:
        out = k.permute_forward(layer.x, r.expert_index, sh.experts, {}).permuted;
        break;
      case Op::PermuteBwd:
        out = k.permute_backward(grad_rows, perm.row_of_slot, sh.top_k);
        break;
      case Op::ExpertsFwd:
        out = k.expert_ffn_forward(perm.permuted, layer.w13, layer.w2, perm.tokens_per_expert, &h);
        break;
      case Op::ExpertsBwd:
        out = std::get<0>(k.expert_ffn_backward(grad_rows, perm.permuted, h, layer.w13, layer.w2,
                                                perm.tokens_per_expert));
        break;
      case Op::UnpermuteFwd:
        out = k.unpermute_forward(y, r.expert_weight, perm.row_of_slot);
        break;
      case Op::UnpermuteBwd:
        out = k.unpermute_backward(grad_out, y, r.expert_weight, perm.row_of_slot, perm.slot).first;
        break;
    }
    sync(out);
  }
}

// The square GEMM rate through LibTorch (at::mm) or through the backend's own GEMM
// (MoEKernels::matmul, oneDNN on the CPU), whichever the capture names.
void BM_DenseGemm(benchmark::State& state, bool backend_gemm) {
  const int64_t n = state.range(0);
  const at::TensorOptions o = bench_options();
  at::Tensor a = at::randn({n, n}, o), b = at::randn({n, n}, o), c = at::empty({n, n}, o);
  const hetmoe::MatmulFn mm = hetmoe::backend_for(a).kernels().matmul;
  if (backend_gemm && !mm) {
    state.SkipWithError("this backend has no GEMM of its own (it uses at::mm)");
    return;
  }
  for (auto _ : state) {
    if (backend_gemm)
      mm(c, a, b, false);
    else
      at::mm_out(c, a, b);
    sync(c);
  }
  state.counters["TFLOP/s"] =
      benchmark::Counter(2.0 * n * n * n * state.iterations() / 1e12, benchmark::Counter::kIsRate);
}

void BM_Copy(benchmark::State& state) {
  const at::TensorOptions o = bench_options().dtype(at::kByte);
  at::Tensor src = at::randint(0, 255, {state.range(0) << 20}, o), dst = at::empty_like(src);
  for (auto _ : state) {
    dst.copy_(src);
    sync(dst);
  }
  state.counters["GB/s"] =
      benchmark::Counter(2.0 * src.numel() * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

void layer_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "hidden", "experts", "top_k", "ffn", "shared"});
  b->Args({2048, 256, 8, 2, 512, 1});   // bench-small's layer
  b->Args({1024, 256, 64, 6, 176, 2});  // Ling-Lite's routing (64 experts, top-6) scaled down
  if (on_gpu()) b->Args({16384, 2048, 64, 6, 1408, 2});  // the Ling-Lite layer itself
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(BM_MoELayer, hetmoe_fwd, Variant::Hetmoe, false)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_MoELayer, hetmoe_fwd_bwd, Variant::Hetmoe, true)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_MoELayer, eager_fwd_bwd, Variant::Eager, true)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_MoELayer, grouped_mm_fwd_bwd, Variant::GroupedMm, true)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Permute, permute, false)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Permute, unpermute, true)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, route_fwd, Op::RouteFwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, route_bwd, Op::RouteBwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, permute_fwd, Op::PermuteFwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, permute_bwd, Op::PermuteBwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, experts_fwd, Op::ExpertsFwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, experts_bwd, Op::ExpertsBwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, unpermute_fwd, Op::UnpermuteFwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_Kernel, unpermute_bwd, Op::UnpermuteBwd)->Apply(layer_shapes);
BENCHMARK_CAPTURE(BM_DenseGemm, aten, false)
    ->Arg(on_gpu() ? 8192 : 1024)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_DenseGemm, backend, true)
    ->Arg(on_gpu() ? 8192 : 1024)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Copy)->Arg(on_gpu() ? 1024 : 128)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
