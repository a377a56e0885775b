#include "hetmoe/bench/suite.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/core/version.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/device/registry.h"
#include "hetmoe/model/layers.h"
#include "hetmoe/model/transformer.h"
#include "hetmoe/train/trainer.h"

namespace hetmoe {
namespace {

constexpr const char* kComponent = "bench";
constexpr const char* kSchema = "hetmoe-bench/1";

using Clock = std::chrono::steady_clock;

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

BenchFigure figure(const char* name, const char* unit, const char* better,
                   std::vector<double> samples) {
  BenchFigure f;
  f.name = name;
  f.unit = unit;
  f.better = better;
  f.samples = std::move(samples);
  return f;
}

// Milliseconds of `repeats` calls of fn after `warmup` untimed ones, each ended by a device sync.
template <typename Fn>
std::vector<double> time_ms(const Backend& b, int index, int warmup, int repeats, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  b.synchronize(index);
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    const auto start = Clock::now();
    fn();
    b.synchronize(index);
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return ms;
}

std::string format_figure(const std::string& backend, const BenchFigure& f) {
  char buf[256];
  const double m = f.median();
  const double spread = m != 0 && f.samples.size() > 1 ? 100.0 * f.stdev() / std::fabs(m) : 0.0;
  int n = std::snprintf(buf, sizeof buf, "%-5s %-22s %12.4g %-9s", backend.c_str(), f.name.c_str(),
                        m, f.unit.c_str());
  if (f.samples.size() > 1) n += std::snprintf(buf + n, sizeof buf - n, " ±%.1f%%", spread);
  if (f.rate > 0)
    n += std::snprintf(buf + n, sizeof buf - n, "  %.4g %s", f.rate, f.rate_unit.c_str());
  if (f.utilisation >= 0)
    std::snprintf(buf + n, sizeof buf - n, " (%.1f%% of %s)", 100.0 * f.utilisation,
                  f.ceiling.c_str());
  return buf;
}

// Collects figures and reports each one as it lands.
class Recorder {
 public:
  Recorder(BenchRun& run, const BenchOptions& options) : run_(run), options_(options) {}

  BenchFigure& add(BenchFigure f) {
    run_.figures.push_back(std::move(f));
    return run_.figures.back();
  }
  // A time figure with the rate its work implies and that rate's share of a ceiling.
  void timed(const std::string& name, std::vector<double> ms, double work, const char* rate_unit,
             const char* ceiling) {
    BenchFigure f = figure(name.c_str(), "ms", "lower", std::move(ms));
    if (work > 0) {
      f.rate = work / (f.median() / 1e3);
      f.rate_unit = rate_unit;
      if (const BenchFigure* c = run_.find(ceiling); c && c->median() > 0) {
        f.ceiling = ceiling;
        f.utilisation = f.rate / c->median();
      }
    }
    report(add(std::move(f)));
  }
  void report(const BenchFigure& f) const {
    if (options_.progress) options_.progress(format_figure(run_.backend, f));
  }

 private:
  BenchRun& run_;
  const BenchOptions& options_;
};

// The device's own ceilings: the faster of LibTorch's GEMM and the backend's, and copies.
void measure_ceilings(const Backend& b, int index, const at::TensorOptions& o,
                      int64_t working_set_bytes, const BenchOptions& opt, Recorder& rec) {
  const bool gpu = o.device().is_cuda();
  const int64_t n = gpu ? 8192 : 1024;
  at::Tensor a = at::randn({n, n}, o), m = at::randn({n, n}, o), c = at::empty({n, n}, o);
  const double flop = 2.0 * n * n * n;
  auto to_tflops = [&](std::vector<double> ms) {
    for (double& v : ms) v = flop / (v / 1e3) / 1e12;
    return ms;
  };
  std::vector<double> best =
      to_tflops(time_ms(b, index, opt.warmup, opt.repeats, [&] { at::mm_out(c, a, m); }));
  if (const MatmulFn mm = b.kernels().matmul) {
    std::vector<double> own =
        to_tflops(time_ms(b, index, opt.warmup, opt.repeats, [&] { mm(c, a, m, false); }));
    if (median_of(own) > median_of(best)) best = own;
  }
  rec.report(rec.add(figure("ceiling.gemm", "TFLOP/s", "higher", best)));

  // Two copies: a large one (device memory bandwidth) and one of the MoE operators' working set
  // (their rows, which may stay in cache): the data-movement operators are held to the latter.
  auto copy_rate = [&](int64_t bytes) {
    at::Tensor src = at::empty({bytes}, o.dtype(at::kByte)).fill_(1), dst = at::empty_like(src);
    std::vector<double> gbps = time_ms(b, index, opt.warmup, opt.repeats, [&] { dst.copy_(src); });
    for (double& v : gbps) v = 2.0 * static_cast<double>(bytes) / (v / 1e3) / 1e9;
    return gbps;
  };
  rec.report(
      rec.add(figure("ceiling.memory", "GB/s", "higher", copy_rate((gpu ? 1024LL : 256LL) << 20))));
  rec.report(rec.add(figure("ceiling.copy", "GB/s", "higher", copy_rate(working_set_bytes))));
}

// Each MoE kernel of the backend's table alone at the config's layer shape: one micro-batch of
// tokens, d_model, the experts and top-k.
void measure_ops(const Config& cfg, const Backend& b, int index, const at::TensorOptions& o,
                 const BenchOptions& opt, Recorder& rec) {
  const MoEKernels& k = b.kernels();
  const int64_t n = cfg.train.micro_batch * cfg.train.seq_len, h = cfg.model.d_model;
  const int64_t e = cfg.moe.num_experts, f = cfg.moe.expert_hidden;
  at::manual_seed(0);
  const at::TensorOptions f32 = o.dtype(at::kFloat);
  at::Tensor x = at::randn({n, h}, o);
  at::Tensor logits = at::randn({n, e}, f32);
  at::Tensor w13 = at::randn({e, h, 2 * f}, o) * 0.02, w2 = at::randn({e, f, h}, o) * 0.02;
  const RouteParams p = route_params(cfg.moe);
  RouteResult r = k.route_forward(logits, p);
  PermuteResult perm = k.permute_forward(x, r.expert_index, e, {});
  at::Tensor hid;
  at::Tensor y = k.expert_ffn_forward(perm.permuted, w13, w2, perm.tokens_per_expert, &hid);
  at::Tensor grad_rows = at::randn_like(y), grad_out = at::randn_like(x);
  at::Tensor grad_weight = at::randn_like(r.expert_weight);

  const double rows = static_cast<double>(n * p.top_k), es = static_cast<double>(x.element_size());
  const double route_bytes = 8.0 * n * e + 12.0 * rows;  // logits in, scores out, choice out
  const double row_bytes = rows * h * es, token_bytes = static_cast<double>(n) * h * es;
  const double ffn_flop = 6.0 * rows * h * f;
  auto run = [&](const std::string& name, double work, bool gemm, auto&& fn) {
    rec.timed(name, time_ms(b, index, opt.warmup, opt.repeats, fn), gemm ? work / 1e12 : work / 1e9,
              gemm ? "TFLOP/s" : "GB/s", gemm ? "ceiling.gemm" : "ceiling.copy");
  };
  run("op.route.forward", route_bytes, false, [&] { k.route_forward(logits, p); });
  run("op.route.backward", route_bytes, false,
      [&] { k.route_backward(at::Tensor(), grad_weight, r.scores, r.expert_index, p); });
  run("op.permute.forward", 2 * row_bytes, false,
      [&] { k.permute_forward(x, r.expert_index, e, {}); });
  run("op.permute.backward", row_bytes + token_bytes, false,
      [&] { k.permute_backward(grad_rows, perm.row_of_slot, p.top_k); });
  run("op.experts.forward", ffn_flop, true,
      [&] { k.expert_ffn_forward(perm.permuted, w13, w2, perm.tokens_per_expert, &hid); });
  run("op.experts.backward", 2 * ffn_flop, true, [&] {
    k.expert_ffn_backward(grad_rows, perm.permuted, hid, w13, w2, perm.tokens_per_expert);
  });
  run("op.unpermute.forward", row_bytes + token_bytes, false,
      [&] { k.unpermute_forward(y, r.expert_weight, perm.row_of_slot); });
  run("op.unpermute.backward", 2 * row_bytes + token_bytes, false,
      [&] { k.unpermute_backward(grad_out, y, r.expert_weight, perm.row_of_slot, perm.slot); });
}

// Whole training steps of the config on the device, run before anything else allocates so the
// memory high-water mark is the training step's own. Returns its tokens/s per timed step; the
// MFU figures wait for the ceilings (measure_mfu).
std::vector<double> measure_training(const Config& config, const std::string& device,
                                     const Backend& b, int index, const CatalogDevice* price,
                                     const BenchOptions& opt, Recorder& rec) {
  Config c = config;
  c.backend.device = device;
  const TempDir run_dir("hetmoe-bench");
  c.run.out_dir = run_dir.path();
  c.train.save_final = false;
  c.train.save_every = 0;
  c.train.steps = std::max<int64_t>(c.train.steps, opt.train_warmup + opt.train_steps + 1);
  TrainerOptions fresh;
  fresh.overwrite = true;  // the temporary directory is empty anyway
  std::vector<double> ms;
  {
    Trainer trainer(c, fresh);
    for (int i = 0; i < opt.train_warmup; ++i) trainer.train_step();
    ms = time_ms(b, index, 0, opt.train_steps, [&] { trainer.train_step(); });
  }
  const double tokens =
      static_cast<double>(c.train.grad_accum * c.train.micro_batch * c.train.seq_len);
  std::vector<double> tps;
  for (double v : ms) tps.push_back(tokens / (v / 1e3));
  rec.timed("train.step_time", ms, 0, "", "");
  BenchFigure& t = rec.add(figure("train.tokens_per_s", "tokens/s", "higher", tps));
  rec.report(t);
  const double median_tps = t.median();
  const double peak_mib = static_cast<double>(b.peak_memory_bytes(index)) / (1 << 20);
  if (peak_mib > 0) rec.report(rec.add(figure("memory.peak", "MiB", "lower", {peak_mib})));
  if (price && median_tps > 0) {
    const double cost = 1e12 / median_tps / 3600.0 * price->price_per_hour;
    rec.report(rec.add(figure("cost.per_1T_tokens", price->currency.c_str(), "lower", {cost})));
  }
  return tps;
}

// Model FLOP/s of the timed steps over the measured GEMM ceiling and over the nominal peak.
void measure_mfu(const Config& c, const std::vector<double>& tps, double nominal_peak_tflops,
                 const BenchRun& run, Recorder& rec) {
  const double flops_per_token = training_flops_per_token(c.model, c.moe, c.train.seq_len);
  std::vector<double> mfu, mfu_peak;
  const BenchFigure* ceiling = run.find("ceiling.gemm");
  for (double v : tps) {
    if (ceiling && ceiling->median() > 0)
      mfu.push_back(v * flops_per_token / (ceiling->median() * 1e12));
    if (nominal_peak_tflops > 0)
      mfu_peak.push_back(v * flops_per_token / (nominal_peak_tflops * 1e12));
  }
  if (!mfu.empty()) rec.report(rec.add(figure("train.mfu", "fraction", "higher", mfu)));
  if (!mfu_peak.empty())
    rec.report(rec.add(figure("train.mfu_peak", "fraction", "higher", mfu_peak)));
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {};
  return gethostname(buf, sizeof buf - 1) == 0 ? buf : "unknown";
}

nlohmann::json figure_json(const BenchFigure& f) {
  nlohmann::json j = {
      {"name", f.name}, {"unit", f.unit}, {"better", f.better}, {"median", f.median()},
      {"min", f.min()}, {"max", f.max()}, {"stdev", f.stdev()}, {"samples", f.samples.size()}};
  if (f.rate > 0) {
    j["rate"] = f.rate;
    j["rate_unit"] = f.rate_unit;
  }
  if (f.utilisation >= 0) {
    j["utilisation"] = f.utilisation;
    j["ceiling"] = f.ceiling;
  }
  return j;
}

}  // namespace

double BenchFigure::median() const {
  return median_of(samples);
}
double BenchFigure::min() const {
  return samples.empty() ? 0 : *std::min_element(samples.begin(), samples.end());
}
double BenchFigure::max() const {
  return samples.empty() ? 0 : *std::max_element(samples.begin(), samples.end());
}
double BenchFigure::stdev() const {
  if (samples.size() < 2) return 0;
  double mean = 0, sq = 0;
  for (double v : samples) mean += v;
  mean /= static_cast<double>(samples.size());
  for (double v : samples) sq += (v - mean) * (v - mean);
  return std::sqrt(sq / static_cast<double>(samples.size() - 1));
}

const BenchFigure* BenchRun::find(const std::string& name) const {
  for (const BenchFigure& f : figures)
    if (f.name == name) return &f;
  return nullptr;
}

BenchRun run_benchmarks(const Config& config, const std::string& device,
                        const DeviceCatalog* catalog, const BenchOptions& options) {
  validate(config);
  HETMOE_CHECK(options.repeats >= 1 && options.warmup >= 0 && options.train_steps >= 1 &&
                   options.train_warmup >= 0,
               kComponent, "repeats and training steps must be >= 1, warm-ups >= 0");
  const c10::Device dev = resolve_device(device);
  const Backend& b = backend_for(dev);
  const int index = dev.has_index() ? dev.index() : 0;
  if (config.train.threads > 0) at::set_num_threads(static_cast<int>(config.train.threads));
  BenchRun run;
  run.backend = b.name();
  run.kernels = b.kernels().implementation;
  run.threads = at::get_num_threads();
  const auto devices = b.devices();
  HETMOE_CHECK(static_cast<size_t>(index) < devices.size(), kComponent, "device '", device,
               "' has no index ", index);
  const DeviceInfo& info = devices[static_cast<size_t>(index)];
  run.device = info.name;
  const CatalogDevice* entry = catalog ? catalog->match(info.name) : nullptr;
  if (entry) {
    run.catalog_entry = entry->name;
    run.price_per_hour = entry->price_per_hour;
    run.currency = entry->currency;
  }
  const std::string& dtype = config.backend.dtype;
  const double nominal =
      nominal_peak(catalog, info.name, dtype,
                   (dtype == "bf16" ? info.peak_bf16_flops : info.peak_fp32_flops) / 1e12)
          .tflops;

  Recorder rec(run, options);
  const at::TensorOptions o =
      at::TensorOptions().device(dev).dtype(dtype == "bf16" ? at::kBFloat16 : at::kFloat);
  const int64_t rows = config.train.micro_batch * config.train.seq_len * config.moe.top_k;
  // Training first: the ceilings' buffers (gigabytes on a GPU) would otherwise be the memory
  // high-water mark, and a CPU's resident-set peak cannot be reset.
  std::vector<double> tps;
  if (options.train) tps = measure_training(config, device, b, index, entry, options, rec);
  measure_ceilings(b, index, o,
                   rows * config.model.d_model * c10::elementSize(o.dtype().toScalarType()),
                   options, rec);
  if (options.train) measure_mfu(config, tps, nominal, run, rec);
  if (options.ops) measure_ops(config, b, index, o, options, rec);
  return run;
}

std::string workload_hash(const Config& config) {
  Config c = config;
  const Config defaults;
  c.run = defaults.run;
  c.data = defaults.data;
  c.comm = defaults.comm;
  c.backend.device = defaults.backend.device;
  c.backend.peak_tflops = 0;
  c.train.steps = defaults.train.steps;
  c.train.log_every = defaults.train.log_every;
  c.train.eval_every = defaults.train.eval_every;
  c.train.save_every = defaults.train.save_every;
  c.train.save_final = defaults.train.save_final;
  c.train.eval_batches = defaults.train.eval_batches;  // the bench never evaluates
  c.train.keep_last = defaults.train.keep_last;
  c.train.threads = defaults.train.threads;  // where it runs (each run records its threads)
  // The values only: to_yaml's comments (each key's description, the header) are not the
  // workload, and rewording one must not make two runs of the same workload incomparable.
  std::istringstream yaml(to_yaml(c));
  std::string text, line;
  while (std::getline(yaml, line)) {
    if (line.rfind('#', 0) == 0) continue;
    const size_t comment = line.find("  # ");  // the strings left here (dtypes, schedule
    if (comment != std::string::npos) line.erase(comment);  // names) hold no " # "
    while (!line.empty() && line.back() == ' ') line.pop_back();
    text += line + "\n";
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx",
                static_cast<unsigned long long>(fnv1a64(text.data(), text.size())));
  return buf;
}

std::string bench_document(const Config& config, const std::string& config_path,
                           const BenchOptions& options, const std::vector<BenchRun>& runs) {
  nlohmann::json doc = {
      {"schema", kSchema},
      {"hetmoe", {{"version", HETMOE_VERSION_STRING}, {"commit", HETMOE_GIT_COMMIT}}},
      {"libtorch", TORCH_VERSION},
      {"host", host_name()},
      {"date", utc_now()},
      {"config",
       {{"path", config_path},
        {"hash", workload_hash(config)},
        {"tokens_per_step",
         config.train.grad_accum * config.train.micro_batch * config.train.seq_len}}},
      {"dtype", config.backend.dtype},
      {"settings",
       {{"warmup", options.warmup},
        {"repeats", options.repeats},
        {"train_warmup", options.train_warmup},
        {"train_steps", options.train_steps}}},
      {"runs", nlohmann::json::array()}};
  for (const BenchRun& r : runs) {
    nlohmann::json j = {{"backend", r.backend},     {"device", r.device},
                        {"kernels", r.kernels},     {"threads", r.threads},
                        {"catalog_entry", nullptr}, {"figures", nlohmann::json::array()}};
    if (!r.catalog_entry.empty()) {
      j["catalog_entry"] = r.catalog_entry;
      j["price_per_hour"] = r.price_per_hour;
      j["currency"] = r.currency;
    }
    for (const BenchFigure& f : r.figures) j["figures"].push_back(figure_json(f));
    doc["runs"].push_back(std::move(j));
  }
  return doc.dump(2) + "\n";
}

std::vector<BenchRun> read_bench_document(const std::string& path, std::string* dtype) {
  std::ifstream in(path);
  HETMOE_CHECK(in.good(), kComponent, "cannot read benchmark result '", path, "'");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    HETMOE_FAIL(kComponent, "'", path, "' is not valid JSON: ", e.what());
  }
  auto need = [&](const nlohmann::json& j, const char* key, const std::string& where,
                  bool string) -> const nlohmann::json& {
    HETMOE_CHECK(
        j.is_object() && j.contains(key) && (string ? j[key].is_string() : j[key].is_array()),
        kComponent, "'", path, "': ", where, " lacks ", string ? "string" : "list", " field '", key,
        "'");
    return j[key];
  };
  HETMOE_CHECK(doc.is_object() && doc.contains("schema") && doc["schema"] == kSchema, kComponent,
               "'", path, "' is not a hetmoe benchmark result (schema ", kSchema, ")");
  auto text_or_empty = [](const nlohmann::json& j, const char* key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  };
  if (dtype) *dtype = need(doc, "dtype", "the document", true).get<std::string>();
  std::vector<BenchRun> runs;
  const auto& list = need(doc, "runs", "the document", false);
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = "runs[" + std::to_string(i) + "]";
    BenchRun r;
    r.backend = need(list[i], "backend", where, true).get<std::string>();
    r.device = need(list[i], "device", where, true).get<std::string>();
    for (const auto& f : need(list[i], "figures", where, false)) {
      HETMOE_CHECK(f.is_object() && f.contains("name") && f["name"].is_string() &&
                       f.contains("median") && f["median"].is_number(),
                   kComponent, "'", path, "': ", where, " has a figure without name or median");
      BenchFigure fig;
      fig.name = f["name"].get<std::string>();
      fig.unit = text_or_empty(f, "unit");
      fig.better = text_or_empty(f, "better");
      fig.samples = {f["median"].get<double>()};
      r.figures.push_back(std::move(fig));
    }
    runs.push_back(std::move(r));
  }
  return runs;
}

}  // namespace hetmoe
