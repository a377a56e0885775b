// SIGINT/SIGTERM/SIGUSR1 during training: the first signal asks the trainer to finish the current
// step, save a checkpoint and exit 0; a second one ends the process at once (exit 128 + signal).
// SIGUSR1 is what Slurm sends before a time limit (`--signal=USR1@120`) and what Open MPI's
// mpirun forwards to every rank as it is (for SIGINT/SIGTERM it kills the ranks after about a
// second, too soon for most saves: docs/distributed.md).
//
// Where the signal is taken matters. A signal handler runs on whichever thread the kernel picks
// and pushes its frame below that thread's stack pointer. oneDNN's JIT f32 GEMM kernels point
// the stack pointer into a heap buffer while they run (oneDNN issue #4845, fixed upstream in
// 2026, present in Debian's 2.6), so a handler that lands on a thread inside one of them
// overwrites heap memory and the process later dies with "corrupted size vs. prev_size". hetmoe
// therefore keeps these signals blocked in every thread that computes and receives them
// synchronously on a watcher thread of its own.
#pragma once

namespace hetmoe {

// Call first thing in main(), before any thread exists. Blocks SIGINT, SIGTERM and SIGUSR1 in the
// calling thread, so in every thread created after it (LibTorch's and OpenMP's workers, MPI's and
// CUDA's helpers), and starts a watcher thread that receives them. While a StopSignals scope is
// alive a signal is handled as described above; outside one it ends the process as it would have
// without hetmoe (the default action). Idempotent. The `hetmoe` CLI calls it; programs that embed
// the Trainer should too (docs/embedding.md).
void install_signal_watcher();

// The watcher thread's name (in /proc/<pid>/task/<tid>/comm, top -H, gdb).
inline constexpr char kSignalWatcherName[] = "hetmoe-signals";

// Whether install_signal_watcher() has run in this process.
bool signal_watcher_installed();

// A scope in which the first SIGINT/SIGTERM/SIGUSR1 is noted instead of ending the process (the
// Trainer opens one for run()). It also installs handlers for them while alive, restoring the
// previous ones after, for threads that existed before install_signal_watcher() or when it was
// never called: that fallback still works, without the protection described above.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal received (SIGINT, SIGTERM or SIGUSR1), or 0. Opening the outermost scope forgets a
  // signal an earlier scope noted.
  static int received();
  // Forgets a received signal (tests).
  static void reset();
};

}  // namespace hetmoe
