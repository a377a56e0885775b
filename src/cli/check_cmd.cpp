// `hetmoe check`: the same training on two sides (two backends, fp32 vs bf16, or the optimised
// kernels vs the naive reference path), compared operator by operator on the first batch and
// loss by loss over the steps. Exit 1 when a difference is beyond its tolerance.
#include <cstdio>
#include <memory>

#include "cli/bench_common.h"
#include "cli/commands.h"
#include "hetmoe/bench/check.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"

namespace hetmoe::cli {
namespace {

struct CheckArgs {
  std::string config, backends, dtypes, kernels;
  std::vector<std::string> sets;
  int64_t steps = 20;
  int64_t loss_window = 1;
  double tolerance = -1, op_tolerance = -1;
};

// The two sides: exactly one of backends, dtypes and kernels has two values; the default with
// one backend is the optimised kernels against the naive reference.
std::pair<CheckSide, CheckSide> sides_of(const CheckArgs& a, const Config& config) {
  const std::vector<std::string> devices =
      a.backends.empty()
          ? std::vector<std::string>{config.backend.device == "auto" ? std::string("cpu")
                                                                     : config.backend.device}
          : split_list(a.backends, "--backends");
  const std::vector<std::string> dtypes = a.dtypes.empty()
                                              ? std::vector<std::string>{config.backend.dtype}
                                              : split_list(a.dtypes, "--dtypes");
  std::vector<std::string> kernels =
      a.kernels.empty() ? std::vector<std::string>{"native"} : split_list(a.kernels, "--kernels");
  for (const std::string& d : dtypes)
    HETMOE_CHECK(d == "fp32" || d == "bf16", "usage", "--dtypes: unknown dtype '", d,
                 "' (known: fp32, bf16)");
  for (const std::string& k : kernels)
    HETMOE_CHECK(k == "native" || k == "portable" || k == "reference", "usage",
                 "--kernels: unknown kernel implementation '", k,
                 "' (known: native, portable, reference)");
  const int pairs = (devices.size() == 2) + (dtypes.size() == 2) + (kernels.size() == 2);
  HETMOE_CHECK(devices.size() <= 2 && dtypes.size() <= 2 && kernels.size() <= 2 && pairs <= 1,
               "usage",
               "give two values to exactly one of --backends, --dtypes and --kernels (the "
               "one thing that differs between the two sides)");
  if (pairs == 0) kernels = {kernels[0] == "reference" ? "native" : kernels[0], "reference"};
  pick_backends(devices);  // each one built in and with a device, before any work
  auto side = [&](size_t i) {
    CheckSide s;
    s.device = devices[std::min(i, devices.size() - 1)];
    s.dtype = dtypes[std::min(i, dtypes.size() - 1)];
    s.kernels = ops::parse_kernel_impl(kernels[std::min(i, kernels.size() - 1)]);
    return s;
  };
  return {side(0), side(1)};
}

// Defaults that hold for a correct build: fp32 operators differ only in summation order (and
// training amplifies that slowly: ~1e-4 after 50 tiny steps); a bf16 side carries bf16 rounding
// (2^-8) into every operator and the loss.
std::pair<double, double> default_tolerances(const CheckSide& a, const CheckSide& b) {
  if (a.dtype != b.dtype) return {3e-2, 5e-2};
  if (a.dtype == "bf16") return {2e-2, 2e-2};
  if (a.device == b.device) return {1e-3, 1e-5};  // same device, other kernels
  return {1e-3, 1e-4};
}

int run_check(const CheckArgs& a) {
  const Config config = load_with_overrides(a.config, a.sets);
  const auto [sa, sb] = sides_of(a, config);
  const auto [loss_tol, op_tol] = default_tolerances(sa, sb);
  CheckOptions options;
  options.steps = a.steps;
  options.tolerance = a.tolerance >= 0 ? a.tolerance : loss_tol;
  options.op_tolerance = a.op_tolerance >= 0 ? a.op_tolerance : op_tol;
  options.loss_window = a.loss_window;
  options.progress = [](const std::string& line) {
    std::fprintf(stderr, "check: %s\n", line.c_str());
    std::fflush(stderr);
  };
  std::printf("check: %s, A = %s, B = %s, %lld steps, tolerance %.1e (loss) / %.1e (operators)",
              a.config.c_str(), sa.label().c_str(), sb.label().c_str(),
              static_cast<long long>(a.steps), options.tolerance, options.op_tolerance);
  if (a.loss_window > 1)
    std::printf(", losses as %lld-step moving means", static_cast<long long>(a.loss_window));
  std::printf("\n");
  std::fflush(stdout);
  const CheckReport r = check_alignment(config, sa, sb, options);

  std::printf("\noperators on the first batch (relative = ||A - B|| / ||A||):\n");
  std::printf("  %-10s %-12s %12s %12s\n", "operator", "tensor", "max |A-B|", "relative");
  for (const OpDifference& d : r.ops)
    std::printf("  %-10s %-12s %12.3e %12.3e%s\n", d.op.c_str(), d.tensor.c_str(), d.max_abs,
                d.relative, d.within ? "" : "  <- beyond tolerance");
  std::printf("  router choices that agree: %.4f%%\n", 100.0 * r.router_agreement);

  std::printf("\nloss per step:\n  %6s %14s %14s %12s\n", "step", "A", "B",
              a.loss_window > 1 ? "rel. (mean)" : "relative");
  const size_t n = r.loss_a.size();
  for (size_t s = 0; s < n; ++s) {
    const bool over = static_cast<int64_t>(s) + 1 == r.first_step_over;
    if (s < 5 || (s + 1) % 10 == 0 || s + 1 == n || over)
      std::printf("  %6zu %14.6f %14.6f %12.3e%s\n", s + 1, r.loss_a[s], r.loss_b[s], r.relative[s],
                  over ? "  <- first beyond tolerance" : "");
  }
  std::printf("\nlargest relative loss difference %.3e over %zu steps; ", r.max_relative, n);
  if (r.passed()) {
    std::printf("check passed\n");
    return 0;
  }
  if (r.first_step_over > 0)
    std::printf("check FAILED: the losses differ by more than %.1e from step %lld",
                options.tolerance, static_cast<long long>(r.first_step_over));
  if (!r.ops_within)
    std::printf("%scheck FAILED: an operator differs by more than %.1e",
                r.first_step_over > 0 ? "; " : "", options.op_tolerance);
  std::printf("\n");
  return 1;
}

}  // namespace

void add_check_command(CLI::App& root, int& status) {
  auto a = std::make_shared<CheckArgs>();
  CLI::App* cmd = root.add_subcommand(
      "check", "Train the same model two ways and compare operators and losses");
  add_config_options(cmd, a->config, a->sets);
  cmd->add_option("-b,--backends", a->backends,
                  "One backend, or two to compare (default: backend.device, or cpu)")
      ->type_name("cpu,cuda")
      ->check(non_empty());
  cmd->add_option("--dtypes", a->dtypes, "One compute dtype, or two to compare")
      ->type_name("fp32,bf16")
      ->check(non_empty());
  cmd->add_option("--kernels", a->kernels,
                  "One kernel implementation, or two to compare (native, portable, reference); "
                  "the default with one backend and one dtype: native,reference")
      ->type_name("native,reference")
      ->check(non_empty());
  cmd->add_option("-n,--steps", a->steps, "Training steps on each side")
      ->check(positive())
      ->capture_default_str();
  cmd->add_option("--tolerance", a->tolerance,
                  "Largest relative loss difference (default: by what differs, see "
                  "docs/benchmarks.md)")
      ->check(non_negative());
  cmd->add_option("--loss-window", a->loss_window,
                  "Compare the losses as moving means over this many steps (1: step by step)")
      ->check(positive())
      ->capture_default_str();
  cmd->add_option("--op-tolerance", a->op_tolerance,
                  "Largest relative operator difference on the first batch")
      ->check(non_negative());
  cmd->callback([a, &status] {
    init_logging(0, "warn");
    status = run_check(*a);
  });
}

}  // namespace hetmoe::cli
