// Traces a window of training steps with LibTorch's profiler (Kineto) and writes, under
// <out_dir>/profile/, the Chrome trace (trace-rank<R>.json, for Perfetto or chrome://tracing) and
// a text summary (summary-rank<R>.txt): the trainer's phases, host operators by self time and, on
// a GPU, device kernels and copies by time. The trainer drives it from run.profile_start and
// run.profile_steps.
#pragma once

#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace hetmoe {

class StepProfiler {
 public:
  // Steps start .. start + steps - 1 (1-based); start 0 traces nothing. `synchronize` waits for
  // the device, so that the trace holds every kernel of the last step.
  StepProfiler(int64_t start, int64_t steps, c10::Device device, std::string out_dir, int rank,
               std::function<void()> synchronize);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  // Around each training step (the step about to run, then the step just taken). A run resumed
  // inside the window traces the rest of it. after_step returns the summary's path when it wrote
  // the files, else "".
  void before_step(int64_t step);
  std::string after_step(int64_t step);
  bool tracing() const { return tracing_; }

 private:
  int64_t start_, steps_;
  c10::Device device_;
  std::string out_dir_;
  int rank_;
  std::function<void()> synchronize_;
  bool tracing_ = false, done_ = false;
  int64_t first_traced_ = 0;
  std::chrono::steady_clock::time_point began_;
};

}  // namespace hetmoe
