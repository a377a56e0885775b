// SIGINT/SIGTERM during training: the first signal asks the trainer to finish the current step,
// save a checkpoint and exit 0; a second one ends the process at once (exit 128 + signal).
#pragma once

namespace hetmoe {

// Installs the handlers while alive and restores the previous ones after.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal received (SIGINT or SIGTERM), or 0.
  static int received();
  // Forgets a received signal (tests).
  static void reset();
};

}  // namespace hetmoe
