// Training health, the Ling report's practice: non-finite steps are skipped and counted (and the
// run stops after too many in a row), loss spikes are detected against the recent losses, their
// batch is skipped and put back to be seen later, and persistent spikes get a scaled-down LR.
// The monitor's state is saved in checkpoints, so a resumed run makes the same decisions.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace hetmoe {

struct HealthOptions {
  int64_t max_bad_steps = 5;     // consecutive non-finite steps before the run stops; 0: never
  double spike_threshold = 6.0;  // a spike: loss > mean + threshold * std of recent losses; 0: off
  int64_t spike_window = 50;     // recent losses kept (the first half must fill before judging)
  double spike_lr_scale = 0.1;   // a spike right after a spike: update with lr * this instead
                                 // (0: skip again)
  int64_t spike_replay_after =
      100;  // a skipped batch is trained again this many steps later; 0: never
};

class HealthMonitor {
 public:
  explicit HealthMonitor(HealthOptions options = {}) : options_(options) {}

  enum class Action { Update, Skip, ScaledUpdate };
  struct Verdict {
    Action action = Action::Update;
    double lr_scale = 1.0;
    std::string why;  // for the log line when not a plain update
  };
  // Judges step `step` (1-based) from its mean loss and global gradient norm. Throws
  // hetmoe::Error when max_bad_steps consecutive steps were non-finite.
  Verdict judge(int64_t step, double loss, double grad_norm);

  // Batches (data-stream indices) to revisit: `defer` queues the step's micro-batches, `due`
  // pops those whose time has come at `step`.
  void defer(int64_t step, const std::vector<int64_t>& streams);
  std::vector<int64_t> due(int64_t step);

  int64_t bad_steps() const { return bad_total_; }
  int64_t spikes() const { return spikes_; }
  int64_t scaled_updates() const { return scaled_; }
  int64_t replayed() const { return replayed_; }
  // Updates not applied: every non-finite step and every spike not given a scaled update (part
  // of the saved state, so it counts on across a resume).
  int64_t skipped_steps() const { return bad_total_ + spikes_ - scaled_; }

  // JSON of the whole state; load() restores it (throws hetmoe::Error on malformed text).
  std::string save() const;
  void load(const std::string& json);

 private:
  void remember(double loss);  // a loss of an applied step joins the window
  size_t window() const {      // losses kept (spike_window, at least 2)
    return static_cast<size_t>(std::max<int64_t>(2, options_.spike_window));
  }

  HealthOptions options_;
  std::deque<double> recent_;  // losses of applied steps (scaled ones included)
  int64_t consecutive_bad_ = 0, bad_total_ = 0;
  int64_t spikes_ = 0, scaled_ = 0, replayed_ = 0;
  bool last_was_spike_ = false;
  std::deque<std::pair<int64_t, int64_t>> deferred_;  // (due step, stream index)
};

}  // namespace hetmoe
