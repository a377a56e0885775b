// `hetmoe bench`: the standard suite (ceilings, MoE operators, training steps, memory, cost) on
// each backend present or named, as a table and a JSON document (docs/benchmarks.md).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/bench_common.h"
#include "cli/commands.h"
#include "hetmoe/bench/suite.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"

namespace hetmoe::cli {
namespace {

struct BenchArgs {
  std::string config, backends, out, dtype, catalog;
  std::vector<std::string> sets;
  BenchOptions options;
  bool no_train = false, no_ops = false, overwrite = false;
};

// The end-of-run table: one row per figure, one column per backend.
void print_table(const std::vector<BenchRun>& runs) {
  std::vector<std::string> names;
  for (const BenchRun& r : runs)
    for (const BenchFigure& f : r.figures)
      if (std::find(names.begin(), names.end(), f.name) == names.end()) names.push_back(f.name);
  std::printf("\n%-22s", "figure");
  for (const BenchRun& r : runs) std::printf(" | %-30s", r.backend.c_str());
  std::printf("\n%-22s", "");
  for (const BenchRun& r : runs) std::printf(" | %-30.30s", r.device.c_str());
  std::printf("\n");
  for (const std::string& n : names) {
    std::printf("%-22s", n.c_str());
    for (const BenchRun& r : runs) {
      char cell[64] = "-";
      if (const BenchFigure* f = r.find(n)) {
        int used = std::snprintf(cell, sizeof cell, "%.4g %s", f->median(), f->unit.c_str());
        if (f->utilisation >= 0)
          std::snprintf(cell + used, sizeof cell - used, " (%.0f%%)", 100.0 * f->utilisation);
      }
      std::printf(" | %-30s", cell);
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

int run_bench(const BenchArgs& a) {
  Config config = load_with_overrides(a.config, a.sets, a.dtype);
  const std::vector<std::string> names = pick_backends(
      a.backends.empty() ? std::vector<std::string>{} : split_list(a.backends, "--backends"));
  const DeviceCatalog catalog = open_catalog(a.catalog);
  if (!a.out.empty()) {
    check_writable(a.out);
    // Refused now, not after the run: a result (or any file) of that name is kept unless asked.
    HETMOE_CHECK(a.overwrite || !std::filesystem::exists(a.out), "usage", "--out '", a.out,
                 "' already exists; give --overwrite to replace it");
  }
  BenchOptions options = a.options;
  options.train = !a.no_train;
  options.ops = !a.no_ops;
  options.progress = [](const std::string& line) {
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  };
  std::vector<BenchRun> runs;
  for (const std::string& backend : names) {
    std::fprintf(stderr, "bench: %s on %s, %s, %s\n", a.config.c_str(), backend.c_str(),
                 config.backend.dtype.c_str(), workload_hash(config).c_str());
    runs.push_back(run_benchmarks(config, backend, &catalog, options));
  }
  print_table(runs);
  if (!a.out.empty()) {
    write_file_atomically(a.out, bench_document(config, a.config, options, runs));
    std::printf("wrote %s\n", a.out.c_str());
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& root, int& status) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = root.add_subcommand(
      "bench", "Benchmark the MoE operators and training steps of a config on each backend");
  add_config_options(cmd, a->config, a->sets);
  cmd->add_option("-b,--backends", a->backends,
                  "Comma-separated backends to run on (default: every available one)")
      ->type_name("cpu,cuda,...")
      ->check(non_empty());
  cmd->add_option("-o,--out", a->out, "Write the results as JSON (schema hetmoe-bench/1)")
      ->type_name("FILE.json")
      ->check(non_empty());
  cmd->add_option("--dtype", a->dtype, "Compute dtype (default: the config's backend.dtype)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--catalog", a->catalog,
                  "Device catalog for peaks and prices (default: configs/devices.yaml)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--warmup", a->options.warmup, "Untimed calls before each operator's samples")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--repeats", a->options.repeats, "Timed samples per operator and ceiling")
      ->check(positive())
      ->capture_default_str();
  cmd->add_option("--train-warmup", a->options.train_warmup, "Untimed training steps")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--train-steps", a->options.train_steps, "Timed training steps")
      ->check(positive())
      ->capture_default_str();
  cmd->add_flag("--overwrite", a->overwrite, "Replace the --out file if it exists");
  cmd->add_flag("--no-train", a->no_train, "Skip the training-step benchmark");
  cmd->add_flag("--no-ops", a->no_ops, "Skip the operator benchmarks");
  cmd->callback([a, &status] {
    init_logging(0, "warn");
    status = run_bench(*a);
  });
}

}  // namespace hetmoe::cli
