#include "hetmoe/train/signals.h"

#include <signal.h>
#include <unistd.h>

namespace hetmoe {
namespace {

volatile sig_atomic_t g_signal = 0;
struct sigaction g_old_int, g_old_term;

void on_signal(int sig) {
  if (g_signal != 0) _exit(128 + sig);  // the second signal: no more waiting
  g_signal = sig;
  static const char msg[] =
      "\nhetmoe: stopping after this step and saving a checkpoint (signal again to quit now)\n";
  ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
}

}  // namespace

StopSignals::StopSignals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
}

StopSignals::~StopSignals() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
}

int StopSignals::received() {
  return g_signal;
}

void StopSignals::reset() {
  g_signal = 0;
}

}  // namespace hetmoe
