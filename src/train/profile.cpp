#include "train/profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"

namespace hetmoe {
namespace {

namespace fs = std::filesystem;
namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

struct Totals {
  int64_t calls = 0;
  uint64_t ns = 0;
};
using Table = std::map<std::string, Totals>;

// Host events nest by time on their thread: an event's self time is its duration less that of
// the events directly inside it.
Table host_self_times(const std::vector<prof::KinetoEvent>& events) {
  std::map<uint64_t, std::vector<const prof::KinetoEvent*>> by_thread;
  for (const auto& e : events)
    if (e.deviceType() == c10::DeviceType::CPU && !e.isAsync() && e.endNs() >= e.startNs())
      by_thread[e.startThreadId()].push_back(&e);
  Table out;
  for (auto& [thread, list] : by_thread) {
    std::sort(list.begin(), list.end(), [](const auto* a, const auto* b) {
      return a->startNs() != b->startNs() ? a->startNs() < b->startNs() : a->endNs() > b->endNs();
    });
    // Stack of open events with the time their children took.
    std::vector<std::pair<const prof::KinetoEvent*, uint64_t>> open;
    auto close = [&](const prof::KinetoEvent* e, uint64_t children) {
      Totals& t = out[e->name()];
      t.calls += 1;
      t.ns += e->durationNs() > children ? e->durationNs() - children : 0;
      if (!open.empty()) open.back().second += e->durationNs();
    };
    for (const auto* e : list) {
      while (!open.empty() && open.back().first->endNs() <= e->startNs()) {
        auto [top, children] = open.back();
        open.pop_back();
        close(top, children);
      }
      open.emplace_back(e, 0);
    }
    while (!open.empty()) {
      auto [top, children] = open.back();
      open.pop_back();
      close(top, children);
    }
  }
  return out;
}

std::string shorten(const std::string& name, size_t width) {
  return name.size() <= width ? name : name.substr(0, width - 3) + "...";
}

void print_table(std::FILE* f, const char* title, const Table& table, int64_t steps,
                 double share_of_ns, size_t rows) {
  std::vector<std::pair<std::string, Totals>> sorted(table.begin(), table.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::fprintf(f, "\n%s\n  %-72s %10s %10s %7s\n", title, "name", "calls/step", "ms/step", "share");
  for (size_t i = 0; i < sorted.size() && i < rows; ++i) {
    const auto& [name, t] = sorted[i];
    std::fprintf(f, "  %-72s %10.1f %10.3f %6.1f%%\n", shorten(name, 72).c_str(),
                 static_cast<double>(t.calls) / steps, t.ns / 1e6 / steps,
                 share_of_ns > 0 ? 100.0 * t.ns / share_of_ns : 0.0);
  }
}

}  // namespace

StepProfiler::StepProfiler(int64_t start, int64_t steps, c10::Device device, std::string out_dir,
                           int rank, std::function<void()> synchronize)
    : start_(start),
      steps_(steps),
      device_(device),
      out_dir_(std::move(out_dir)),
      rank_(rank),
      synchronize_(std::move(synchronize)) {}

StepProfiler::~StepProfiler() {
  // A run that ends inside the window (an error, a stop signal) leaves no trace behind.
  if (tracing_) {
    try {
      prof::disableProfiler();
    } catch (...) {
    }
  }
}

void StepProfiler::before_step(int64_t step) {
  if (start_ <= 0 || tracing_ || done_ || step < start_ || step >= start_ + steps_) return;
  std::set<ActivityType> activities{ActivityType::CPU};
  // Device kernels and copies: CUPTI on NVIDIA, roctracer on a ROCm build (same device type).
  if (device_.is_cuda()) activities.insert(ActivityType::CUDA);
  const ProfilerConfig config(ProfilerState::KINETO);
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  tracing_ = true;
  first_traced_ = step;
  began_ = std::chrono::steady_clock::now();
  HETMOE_LOG_INFO("profiling steps %lld..%lld", static_cast<long long>(step),
                  static_cast<long long>(start_ + steps_ - 1));
}

std::string StepProfiler::after_step(int64_t step) {
  if (!tracing_ || step < start_ + steps_ - 1) return "";
  if (synchronize_) synchronize_();
  const double wall_ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - began_).count();
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  tracing_ = false;
  done_ = true;
  const int64_t n = step - first_traced_ + 1;

  const fs::path dir = fs::path(out_dir_) / "profile";
  fs::create_directories(dir);
  const std::string rank = std::to_string(rank_);
  const fs::path trace = dir / ("trace-rank" + rank + ".json");
  const fs::path summary = dir / ("summary-rank" + rank + ".txt");
  result->save(trace.string());

  const auto& events = result->events();
  Table phases, device;
  uint64_t device_ns = 0;
  for (const auto& e : events) {
    if (e.deviceType() != c10::DeviceType::CPU) {
      Totals& t = device[e.name()];
      t.calls += 1;
      t.ns += e.durationNs();
      device_ns += e.durationNs();
    } else if (e.name().rfind("hetmoe::", 0) == 0) {
      Totals& t = phases[e.name()];
      t.calls += 1;
      t.ns += e.durationNs();
    }
  }
  std::FILE* f = std::fopen(summary.c_str(), "w");
  HETMOE_CHECK(f, "profile", "cannot write ", summary.string());
  std::fprintf(f,
               "hetmoe profile, rank %d: steps %" PRId64 "..%" PRId64 " (%" PRId64
               ") on %s, %.1f ms per step (host wall time)\n"
               "trace: %s (open in https://ui.perfetto.dev or chrome://tracing)\n",
               rank_, first_traced_, step, n, device_.str().c_str(), wall_ns / 1e6 / n,
               trace.c_str());
  print_table(f,
              "hetmoe phases and operators (host time, including what runs inside them):", phases,
              n, wall_ns, 30);
  print_table(f, "host operators by self time (top 25):", host_self_times(events), n, wall_ns, 25);
  if (!device.empty()) {
    print_table(f, "device kernels and copies by time (top 25; share of all device time):", device,
                n, static_cast<double>(device_ns), 25);
    std::fprintf(f,
                 "\ndevice time, kernels and copies summed: %.3f ms per step, %.1f%% of the wall "
                 "time (streams that overlap can add up to more)\n",
                 device_ns / 1e6 / n, 100.0 * device_ns / wall_ns);
  }
  std::fclose(f);
  HETMOE_LOG_INFO("profile of steps %lld..%lld written: %s", static_cast<long long>(first_traced_),
                  static_cast<long long>(step), summary.c_str());
  return summary.string();
}

}  // namespace hetmoe
