// `hetmoe plan`: parameters, FLOPs, memory per rank and the time and cost of 1T training tokens on
// every catalog device, without training (docs/benchmarks.md).
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>

#include "cli/bench_common.h"
#include "cli/commands.h"
#include "hetmoe/bench/plan.h"
#include "hetmoe/bench/suite.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"

namespace hetmoe::cli {
namespace {

struct PlanArgs {
  std::string config, grid, dtype, catalog;
  std::vector<std::string> sets, bench;
  double mfu = 0.4;
  double tokens = 1e12;
};

std::string count(double n) {
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

std::string gb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GB", static_cast<double>(bytes) / 1e9);
  return buf;
}

// 1234567.8 -> "1,234,568"
std::string thousands(double v) {
  if (!(std::abs(v) < 1e15)) {  // beyond what a table needs (and llround's range), or NaN
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
  }
  std::string digits = std::to_string(static_cast<long long>(std::llround(v)));
  for (int i = static_cast<int>(digits.size()) - 3; i > (digits[0] == '-' ? 1 : 0); i -= 3)
    digits.insert(static_cast<size_t>(i), ",");
  return digits;
}

std::string duration(double hours) {
  char buf[32];
  if (hours >= 48)
    std::snprintf(buf, sizeof buf, "%.1f days", hours / 24);
  else
    std::snprintf(buf, sizeof buf, "%.1f h", hours);
  return buf;
}

// Measured MFU (of the nominal peak) per catalog entry, from bench documents in the plan's dtype.
std::map<std::string, double> measured_mfu(const std::vector<std::string>& files,
                                           const DeviceCatalog& catalog, const std::string& dtype) {
  std::map<std::string, double> out;
  for (const std::string& file : files) {
    std::string doc_dtype;
    for (const BenchRun& run : read_bench_document(file, &doc_dtype)) {
      const CatalogDevice* entry = catalog.match(run.device);
      const BenchFigure* mfu = run.find("train.mfu_peak");
      if (!entry || !mfu) {
        std::fprintf(stderr, "plan: %s: %s run on '%s' %s; not used\n", file.c_str(),
                     run.backend.c_str(), run.device.c_str(),
                     entry ? "has no train.mfu_peak" : "matches no catalog device");
        continue;
      }
      if (doc_dtype != dtype) {
        std::fprintf(stderr, "plan: %s was measured in %s, the plan is in %s; not used\n",
                     file.c_str(), doc_dtype.c_str(), dtype.c_str());
        continue;
      }
      out[entry->name] = mfu->median();
    }
  }
  return out;
}

int run_plan(const PlanArgs& a) {
  const Config config = load_with_overrides(a.config, a.sets);
  const std::string dtype = a.dtype.empty() ? config.backend.dtype : a.dtype;
  PlanGrid grid;
  grid.expert = config.parallel.expert_parallel;
  if (!a.grid.empty()) {
    try {
      grid = parse_grid(a.grid, grid);
    } catch (const Error& e) {  // the flag's syntax: a usage error
      throw Error("usage", std::string(e.what()).substr(e.component().size() + 3));
    }
  }
  const TrainingPlan p = plan_training(config, grid, dtype);
  const DeviceCatalog catalog = open_catalog(a.catalog);
  const std::map<std::string, double> measured = measured_mfu(a.bench, catalog, dtype);

  const auto& m = config.model;
  const auto& e = config.moe;
  std::printf("plan: %s, %s, grid dp=%lld x ep=%lld (%lld ranks)\n", a.config.c_str(),
              dtype.c_str(), static_cast<long long>(grid.data), static_cast<long long>(grid.expert),
              static_cast<long long>(grid.world()));
  std::printf("model: %lld layers, d_model %lld, %lld experts top-%lld + %lld shared, vocab %lld\n",
              static_cast<long long>(m.n_layers), static_cast<long long>(m.d_model),
              static_cast<long long>(e.num_experts), static_cast<long long>(e.top_k),
              static_cast<long long>(e.num_shared_experts), static_cast<long long>(m.vocab_size));
  const double total = static_cast<double>(p.parameters.total);
  std::printf("parameters: %s total, %s active per token (%.1f%%), %s in routed experts\n",
              count(total).c_str(),
              count(static_cast<double>(p.parameters.active_per_token)).c_str(),
              100.0 * static_cast<double>(p.parameters.active_per_token) / total,
              count(static_cast<double>(p.expert_parameters)).c_str());
  std::printf(
      "training FLOPs: %.2f GFLOP per token at seq_len %lld (6 x active matrix "
      "parameters + causal attention)\n",
      p.flops_per_token / 1e9, static_cast<long long>(config.train.seq_len));
  std::printf(
      "\nmemory per rank: %s parameters (%lld of %lld experts per MoE layer), %lld tokens "
      "per micro-batch\n",
      count(static_cast<double>(p.parameters_per_rank)).c_str(),
      static_cast<long long>(p.experts_per_rank), static_cast<long long>(e.num_experts),
      static_cast<long long>(p.tokens_per_rank));
  std::printf("  %-36s %12s\n", "weights (fp32 master)", gb(p.memory.weights).c_str());
  if (p.memory.compute_weights > 0)
    std::printf("  %-36s %12s\n", "weights (bf16 compute copies)",
                gb(p.memory.compute_weights).c_str());
  std::printf("  %-36s %12s\n", "gradients (fp32)", gb(p.memory.gradients).c_str());
  std::printf("  %-36s %12s\n", "optimizer state (AdamW, fp32)", gb(p.memory.optimizer).c_str());
  std::printf("  %-36s %12s\n", "activations (estimate)", gb(p.memory.activations).c_str());
  std::printf("  %-36s %12s\n", "total", gb(p.memory.total()).c_str());

  std::printf(
      "\n%.3g training tokens on %lld devices of each catalog type (MFU: measured where "
      "--bench gives it, else assumed %.0f%%):\n",
      a.tokens, static_cast<long long>(grid.world()), 100.0 * a.mfu);
  std::printf("%-18s %10s %9s %6s %14s %12s %16s  %s\n", "device", "peak TF/s", "MFU", "",
              "device-hours", "wall time", "cost", "memory");
  for (const CatalogDevice& d : catalog.devices) {
    const auto it = measured.find(d.name);
    const bool is_measured = it != measured.end();
    const DeviceEstimate est = estimate_on(p, d, is_measured ? it->second : a.mfu, a.tokens);
    const char* fits = est.fits ? "fits" : "does not fit";
    if (est.peak_tflops <= 0) {
      std::printf("%-18s %10s %9s %6s %14s %12s %16s  %s\n", d.name.c_str(), "-", "-", "", "-", "-",
                  "(no peak)", fits);
      continue;
    }
    const std::string cost = thousands(est.cost) + " " + d.currency;
    std::printf("%-18s %10.1f %8.1f%% %-6s %14s %12s %16s  %s (%.0f GB)\n", d.name.c_str(),
                est.peak_tflops, 100.0 * est.mfu, is_measured ? "meas." : "assum.",
                thousands(est.device_hours).c_str(), duration(est.wall_hours).c_str(), cost.c_str(),
                fits, d.memory_gb);
  }
  return 0;
}

}  // namespace

void add_plan_command(CLI::App& root, int& status) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = root.add_subcommand(
      "plan", "Parameters, FLOPs, memory per rank, and time and cost per device, without training");
  add_config_options(cmd, a->config, a->sets);
  cmd->add_option("-g,--grid", a->grid,
                  "Process grid: data- and expert-parallel ranks (default: dp=1, "
                  "ep=parallel.expert_parallel)")
      ->check(non_empty())
      ->type_name("dp=N,ep=M");
  cmd->add_option("--dtype", a->dtype, "Compute dtype (default: the config's backend.dtype)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--bench", a->bench,
                  "hetmoe bench results (JSON): their measured MFU replaces --mfu for the "
                  "devices they ran on (repeatable)")
      ->check(CLI::ExistingFile)
      ->type_name("FILE.json");
  cmd->add_option("--mfu", a->mfu, "Assumed MFU of the nominal peak for unmeasured devices")
      ->check(finite_number())
      ->check(CLI::Range(1e-6, 1.0))
      ->capture_default_str();
  cmd->add_option("--tokens", a->tokens, "Training tokens to price")
      ->check(positive())
      ->capture_default_str();
  cmd->add_option("--catalog", a->catalog, "Device catalog (default: configs/devices.yaml)")
      ->check(CLI::ExistingFile);
  cmd->callback([a, &status] {
    init_logging(0, "warn");
    status = run_plan(*a);
  });
}

}  // namespace hetmoe::cli
