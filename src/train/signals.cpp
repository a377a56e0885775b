#include "hetmoe/train/signals.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

namespace hetmoe {
namespace {

// Lock-free atomics: safe to touch from a signal handler.
std::atomic<int> g_signal{0};
std::atomic<int> g_scopes{0};
std::atomic<bool> g_watcher{false};
static_assert(std::atomic<int>::is_always_lock_free);

std::mutex g_scope_mutex;  // guards the handler swap of the outermost scope
struct sigaction g_old_int, g_old_term, g_old_usr1;

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);  // Slurm's --signal=USR1@T and mpirun forward it to every rank
  return set;
}

// The first signal is noted and said; a second one quits at once. Async-signal-safe.
void note(int sig) {
  int none = 0;
  if (!g_signal.compare_exchange_strong(none, sig)) {
    static const char quit[] = "\nhetmoe: second signal: quitting now, without saving this step\n";
    ssize_t ignored = write(STDERR_FILENO, quit, sizeof quit - 1);
    (void)ignored;
    _exit(128 + sig);
  }
  static const char msg[] =
      "\nhetmoe: stopping after this step and saving a checkpoint (signal again to quit now)\n";
  ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
}

void on_signal(int sig) {
  note(sig);
}

[[noreturn]] void watch(sigset_t set) {
  pthread_setname_np(pthread_self(), kSignalWatcherName);
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    {
      // Under the scope lock: a scope that is closing either sees the note or is gone.
      std::lock_guard<std::mutex> lock(g_scope_mutex);
      if (g_scopes.load() > 0) {
        note(sig);
        continue;
      }
    }
    // No training scope: let the signal do whatever its disposition says (by default, end the
    // process), on this thread, as if hetmoe had never blocked it.
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    raise(sig);
    pthread_sigmask(SIG_BLOCK, &one, nullptr);
  }
}

}  // namespace

void install_signal_watcher() {
  static std::once_flag once;
  std::call_once(once, [] {
    const sigset_t set = stop_set();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread(watch, set).detach();  // created blocked too, as sigwait requires
    g_watcher = true;
  });
}

bool signal_watcher_installed() {
  return g_watcher.load();
}

StopSignals::StopSignals() {
  std::lock_guard<std::mutex> lock(g_scope_mutex);
  if (g_scopes.fetch_add(1) > 0) return;
  g_signal = 0;  // a signal noted by an earlier scope belongs to its run, not this one
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGUSR1, &sa, &g_old_usr1);
}

StopSignals::~StopSignals() {
  std::lock_guard<std::mutex> lock(g_scope_mutex);
  if (g_scopes.fetch_sub(1) > 1) return;
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGUSR1, &g_old_usr1, nullptr);
}

int StopSignals::received() {
  return g_signal.load();
}

void StopSignals::reset() {
  g_signal = 0;
}

}  // namespace hetmoe
