// Robust training: checksummed checkpoints and the fallback to the newest valid one, keep_last
// rotation, kill -9 during saves, SIGTERM/SIGINT handling, NaN and loss-spike handling, and the
// imbalance warning.
#include <ATen/ATen.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "hetmoe/core/error.h"
#include "hetmoe/model/transformer.h"
#include "hetmoe/train/health.h"
#include "hetmoe/train/signals.h"
#include "hetmoe/train/trainer.h"
#include "support/error_of.h"
#include "support/temp_dir.h"
#include "support/train_fixture.h"

extern char** environ;

namespace fs = std::filesystem;

namespace hetmoe {
namespace {

using test_support::prepare_corpus;
using test_support::TempDir;
using test_support::tiny_config;

std::string step_dir(const Config& c, int step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08d", step);
  return (fs::path(c.run.out_dir) / "checkpoints" / buf).string();
}

void damage(const std::string& path, bool truncate) {
  if (truncate) {
    fs::resize_file(path, fs::file_size(path) / 2);
  } else {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(path) - 3));
    f.put('\x5a');
  }
}

using test_support::error_of;

// A finished 4-step run of the tiny config with checkpoints at steps 2 and 4.
Config run_with_two_checkpoints(TempDir& dir) {
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 4;
  c.train.save_every = 2;
  Trainer(c).run();
  return c;
}

TEST(CheckpointTest, TruncatedOrCorruptFilesAreRefusedByName) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 2;
  c.train.warmup = 1;
  c.train.save_every = 2;
  Trainer(c).run();
  const std::string ckpt = step_dir(c, 2);
  EXPECT_NO_THROW(verify_checkpoint(ckpt));
  damage(ckpt + "/optimizer.safetensors", /*truncate=*/false);
  EXPECT_NE(error_of([&] { load_checkpoint(ckpt); }).find("optimizer.safetensors' is corrupt"),
            std::string::npos);
  damage(ckpt + "/model.safetensors", /*truncate=*/true);
  EXPECT_NE(error_of([&] { load_checkpoint(ckpt); }).find("model.safetensors' is truncated"),
            std::string::npos);
}

// The model alone needs no optimizer state: a checkpoint copied without optimizer.safetensors
// (for generation elsewhere) loads its model, verified, and only a resume misses the file.
TEST(CheckpointTest, TheModelLoadsFromACheckpointWithoutItsOptimizerState) {
  TempDir dir;
  const Config c = run_with_two_checkpoints(dir);
  const std::string ckpt = step_dir(c, 4);
  const LoadedCheckpoint before = load_checkpoint(ckpt);
  fs::remove(ckpt + "/optimizer.safetensors");
  const LoadedCheckpoint whole = load_whole_model(ckpt, TransformerImpl::is_expert_parameter);
  const LoadedCheckpoint model = load_checkpoint(c.run.out_dir, /*load_optimizer=*/false);
  EXPECT_EQ(model.dir, ckpt);  // the newest, not fallen back from
  for (const auto& [name, t] : before.model) {
    EXPECT_TRUE(at::equal(whole.model.at(name), t)) << name;
    EXPECT_TRUE(at::equal(model.model.at(name), t)) << name;
  }
  EXPECT_NE(error_of([&] { load_checkpoint(ckpt); }).find("optimizer.safetensors' is missing"),
            std::string::npos);
  // The model's own files are still checked.
  damage(ckpt + "/model.safetensors", /*truncate=*/false);
  EXPECT_NE(error_of([&] {
              load_whole_model(ckpt, TransformerImpl::is_expert_parameter);
            }).find("model.safetensors' is corrupt"),
            std::string::npos);
}

// A manifest edited so that it would pass unchecked: an entry of its checksum list deleted (which
// would switch that file's check off), a step other than its directory's, malformed
// training-health state, a version this hetmoe does not write. Each is refused when named, and
// a resume of the run directory falls back past it.
TEST(CheckpointTest, EditedManifestsAreRefusedAndFallenBackFrom) {
  TempDir dir;
  const Config c = run_with_two_checkpoints(dir);
  const std::string manifest = step_dir(c, 4) + "/state.json";
  const std::string original = test_support::file_text(manifest);
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> edits = {
      {[](nlohmann::json& j) { j["files"].erase("model.safetensors"); },
       "lists no size and checksum for model.safetensors"},
      {[](nlohmann::json& j) { j["step"] = 3; }, "says step 3, but its directory is step_00000004"},
      {[](nlohmann::json& j) { j["health"]["recent_losses"] = {"x"}; },
       "training-health state in state.json is malformed"},
      {[](nlohmann::json& j) { j["version"] = 2; },
       "manifest version 2 is not one this hetmoe reads"},
  };
  for (const auto& [edit, message] : edits) {
    SCOPED_TRACE(message);
    nlohmann::json j = nlohmann::json::parse(original);
    edit(j);
    std::ofstream(manifest) << j.dump(2);
    EXPECT_NE(error_of([&] { load_checkpoint(step_dir(c, 4)); }).find(message), std::string::npos)
        << error_of([&] { load_checkpoint(step_dir(c, 4)); });
    EXPECT_EQ(Trainer(c, TrainerOptions{c.run.out_dir}).state().step, 2);
  }
  std::ofstream(manifest) << original;
  EXPECT_EQ(load_checkpoint(step_dir(c, 4)).state.step, 4);
}

TEST(CheckpointTest, ResumeFallsBackToTheNewestValidCheckpoint) {
  TempDir dir;
  const Config c = run_with_two_checkpoints(dir);
  damage(step_dir(c, 4) + "/model.safetensors", false);
  EXPECT_EQ(Trainer(c, TrainerOptions{c.run.out_dir}).state().step, 2);  // falls back
  // Named explicitly, the damaged checkpoint is an error, not a silent substitute.
  EXPECT_THROW(Trainer(c, TrainerOptions{step_dir(c, 4)}), Error);
  // Nothing valid at all: an error listing what is wrong.
  damage(step_dir(c, 2) + "/model.safetensors", true);
  EXPECT_NE(
      error_of([&] { Trainer(c, TrainerOptions{c.run.out_dir}); }).find("no valid checkpoint"),
      std::string::npos);
}

// A run directory whose `latest` is gone or names a missing step still resumes, from its newest
// checkpoint that verifies; checkpoints newer than `latest` (a future a resume abandoned) are
// never taken.
TEST(CheckpointTest, ResumeFindsCheckpointsWithoutAUsableLatest) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 4;
  c.train.save_every = 1;
  Trainer(c).run();
  const fs::path root = fs::path(c.run.out_dir) / "checkpoints";
  fs::remove(root / "latest");
  EXPECT_EQ(Trainer(c, TrainerOptions{c.run.out_dir}).state().step, 4);
  std::ofstream(root / "latest") << "step_00000009\n";
  EXPECT_EQ(Trainer(c, TrainerOptions{c.run.out_dir}).state().step, 4);
  std::ofstream(root / "latest", std::ios::trunc) << "step_00000002\n";
  damage(step_dir(c, 2) + "/model.safetensors", false);
  EXPECT_EQ(Trainer(c, TrainerOptions{c.run.out_dir}).state().step, 1);
}

// Resumed from step 2 of a 4-step run (with another learning rate: another future), the new
// timeline's first save (step 3) moves the old steps 3 and 4 aside (kept, out of reach of
// fallback and keep_last), so keep_last counts the new checkpoints.
TEST(CheckpointTest, KeepLastAfterAResumeFromAnEarlierStepKeepsTheNewCheckpoints) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 4;
  c.train.save_every = 1;
  Trainer(c).run();
  const std::string old_step3 = test_support::file_text(step_dir(c, 3) + "/state.json");
  Config again = c;
  again.train.keep_last = 2;
  again.train.lr = c.train.lr / 2;
  Trainer t(again, TrainerOptions{step_dir(c, 2)});
  t.train_step();
  t.save();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(fs::path(c.run.out_dir) / "checkpoints"))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"abandoned-after-step_00000003", "latest",
                                             "step_00000002", "step_00000003"}));
  const fs::path aside = fs::path(c.run.out_dir) / "checkpoints" / "abandoned-after-step_00000003";
  EXPECT_TRUE(fs::exists(aside / "step_00000004" / "state.json"));
  EXPECT_EQ(test_support::file_text(aside / "step_00000003" / "state.json"), old_step3);
  EXPECT_NE(test_support::file_text(step_dir(c, 3) + "/state.json"), old_step3);
  // Saving a step again rewrites nothing.
  struct stat before {};
  ASSERT_EQ(stat(step_dir(c, 3).c_str(), &before), 0);
  EXPECT_EQ(t.save(), step_dir(c, 3));
  struct stat after {};
  ASSERT_EQ(stat(step_dir(c, 3).c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  // The new timeline reaches step 4; keep_last applies to it alone.
  t.train_step();
  t.save();
  names.clear();
  for (const auto& e : fs::directory_iterator(fs::path(c.run.out_dir) / "checkpoints"))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"abandoned-after-step_00000003", "latest",
                                             "step_00000003", "step_00000004"}));
  EXPECT_EQ(load_checkpoint(c.run.out_dir).state.step, 4);
}

TEST(CheckpointTest, KeepLastRotatesOldCheckpointsAway) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 5;
  c.train.save_every = 1;
  c.train.keep_last = 2;
  Trainer(c).run();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(fs::path(c.run.out_dir) / "checkpoints"))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step_00000004", "step_00000005"}));
}

// The CLI as a child process (so kill -9 and signals hit a real training run).
pid_t spawn_train(const TempDir& dir, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {HETMOE_CLI_PATH, "train", "--config", dir.str("cfg.yaml")};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, dir.str("out.log").c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

void write_cli_config(const TempDir& dir, int steps) {
  dir.write("cfg.yaml",
            "model: {d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, "
            "max_seq_len: 32, first_k_dense: 1, dense_ffn_hidden: 64}\n"
            "moe: {num_experts: 4, top_k: 2, expert_hidden: 64}\n"
            "train: {steps: " +
                std::to_string(steps) +
                ", micro_batch: 4, seq_len: 16, warmup: 2, eval_every: 100000, "
                "log_every: 1, save_every: 1, threads: 1}\n"
                "data: {path: " +
                dir.str("data") +
                "}\nbackend: {device: cpu}\n"
                "run: {out_dir: " +
                dir.str("run") + "}\n");
}

int64_t logged_steps(const TempDir& dir) {
  std::ifstream in(dir.str("run/metrics.jsonl"));
  int64_t n = 0;
  std::string line;
  while (std::getline(in, line)) ++n;
  return n;
}

// A one-process checkpoint loads as any rank's part of an expert-parallel grid: the rank's
// experts cut from each expert tensor, model and optimizer state alike, the rest whole. Without
// the sharded-tensor test the other grid is refused, naming both.
TEST(CheckpointTest, AOneProcessCheckpointReshardsToAnExpertParallelRank) {
  TempDir dir;
  const Config c = run_with_two_checkpoints(dir);
  const LoadedCheckpoint whole = load_checkpoint(step_dir(c, 4));
  CheckpointShard rank3;  // data 2 x expert 2: experts 2 and 3 of 4
  rank3.rank = 3;
  rank3.world = 4;
  rank3.expert_parallel = 2;
  EXPECT_NE(error_of([&] { load_checkpoint(step_dir(c, 4), true, rank3); })
                .find("written by a grid of 1 rank with expert_parallel 1; this run has 4 ranks "
                      "with expert_parallel 2"),
            std::string::npos);
  const LoadedCheckpoint part =
      load_checkpoint(step_dir(c, 4), true, rank3, TransformerImpl::is_expert_parameter);
  EXPECT_EQ(part.state.step, 4);
  int experts = 0;
  for (const auto* maps : {&part.model, &part.optimizer}) {
    const auto& full = maps == &part.model ? whole.model : whole.optimizer;
    ASSERT_EQ(maps->size(), full.size());
    for (const auto& [name, t] : full) {
      const bool expert = TransformerImpl::is_expert_parameter(name);
      experts += expert;
      EXPECT_TRUE(at::equal(maps->at(name), expert ? t.narrow(0, 2, 2) : t)) << name;
    }
  }
  EXPECT_EQ(experts, 6);  // w13 and w2 of the one MoE layer, with their exp_avg and exp_avg_sq
  // Pure data parallelism holds every expert on every rank: any grid of it takes the whole
  // state, with or without the test.
  CheckpointShard data_rank;
  data_rank.rank = 1;
  data_rank.world = 2;
  const LoadedCheckpoint copy = load_checkpoint(step_dir(c, 4), true, data_rank);
  for (const auto& [name, t] : whole.model) EXPECT_TRUE(at::equal(copy.model.at(name), t)) << name;
  EXPECT_EQ(copy.optimizer.size(), whole.optimizer.size());
  EXPECT_EQ(load_whole_model(step_dir(c, 4), {}).model.size(), whole.model.size());
}

TEST(CheckpointTest, KillNineDuringSavesLeavesALoadableCheckpoint) {
  TempDir dir;
  prepare_corpus(dir);
  write_cli_config(dir, 100000);
  std::mt19937 rng(7);
  for (int trial = 0; trial < 6; ++trial) {
    const pid_t pid =
        spawn_train(dir, trial == 0 ? std::vector<std::string>{"--overwrite"}
                                    : std::vector<std::string>{"--resume", dir.str("run")});
    // Wait for training to be under way (every step saves), then kill at a random moment.
    for (int i = 0; i < 600 && logged_steps(dir) < 2 * (trial + 1); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<>(0, 60)(rng)));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "trial " << trial;
    LoadedCheckpoint c;
    ASSERT_NO_THROW(c = load_checkpoint(dir.str("run"))) << "trial " << trial;
    EXPECT_GE(c.state.step, 1);
  }
}

// SIGTERM while the GEMMs run on two threads. Before signals went to a watcher thread, this
// corrupted the heap about once in ten tries: oneDNN's JIT GEMM points rsp into the heap, and a
// handler frame landing there overwrote it (train/signals.h). Several tries make a regression
// show.
TEST(SignalTest, SigtermFinishesTheStepSavesAndExitsZero) {
  for (int trial = 0; trial < 6; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    TempDir dir;
    prepare_corpus(dir);
    write_cli_config(dir, 100000);
    const pid_t pid = spawn_train(
        dir, {"--overwrite", "--set", "train.save_every=0", "--set", "train.threads=2"});
    for (int i = 0; i < 600 && logged_steps(dir) < 3 + trial; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    std::ifstream log(dir.str("out.log"));
    std::string text((std::istreambuf_iterator<char>(log)), {});
    const std::string tail = text.substr(text.size() > 800 ? text.size() - 800 : 0);
    ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status) << "\n" << tail;
    EXPECT_EQ(WEXITSTATUS(status), 0) << tail;
    LoadedCheckpoint c = load_checkpoint(dir.str("run"));
    EXPECT_EQ(c.state.step, logged_steps(dir));  // the last finished step, saved
    EXPECT_NE(text.find("stopped by signal 15"), std::string::npos) << tail;
  }
}

// SigBlk of /proc/<pid>/task/<tid>/status: the thread's blocked-signal mask (in hex), or
// nothing when the thread has ended since the directory was listed.
std::optional<uint64_t> blocked_signals(const fs::path& task) {
  std::ifstream in(task / "status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("SigBlk:", 0) == 0) return std::stoull(line.substr(7), nullptr, 16);
  return std::nullopt;
}

TEST(SignalTest, NoThreadOfATrainingRunTakesStopSignals) {
  TempDir dir;
  prepare_corpus(dir);
  write_cli_config(dir, 100000);
  const pid_t pid = spawn_train(dir, {"--overwrite", "--set", "train.threads=2"});
  for (int i = 0; i < 600 && logged_steps(dir) < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const uint64_t stop_bits = (uint64_t{1} << (SIGINT - 1)) | (uint64_t{1} << (SIGTERM - 1)) |
                             (uint64_t{1} << (SIGUSR1 - 1));
  int threads = 0, watchers = 0;
  for (const auto& task : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
    std::string name;
    std::getline(std::ifstream(task.path() / "comm"), name);
    // The watcher waits in sigwait, which shows the awaited signals as unblocked while it waits.
    if (name == kSignalWatcherName) {
      ++watchers;
      continue;
    }
    const std::optional<uint64_t> blocked = blocked_signals(task.path());
    if (!blocked) continue;  // gone meanwhile
    ++threads;
    EXPECT_EQ(*blocked & stop_bits, stop_bits) << "thread " << task.path().filename().string()
                                               << " (" << name << ") would run a signal handler";
  }
  EXPECT_EQ(watchers, 1);
  EXPECT_GE(threads, 2);  // the main thread and an OpenMP worker at least
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

TEST(SignalTest, TheFirstSignalIsNotedAndASecondQuitsAtOnce) {
  {
    StopSignals handlers;
    StopSignals::reset();
    raise(SIGTERM);
    EXPECT_EQ(StopSignals::received(), SIGTERM);  // noted, the process goes on
    StopSignals::reset();
  }
  EXPECT_EXIT(
      {
        StopSignals handlers;
        raise(SIGINT);
        raise(SIGINT);
      },
      ::testing::ExitedWithCode(128 + SIGINT),
      "stopping after this step(.|\n)*second signal: quitting now, without saving");
}

bool wait_for_signal(int sig) {
  for (int i = 0; i < 500 && StopSignals::received() != sig; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return StopSignals::received() == sig;
}

bool stop_signals_blocked_here() {
  sigset_t mask;
  pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  return sigismember(&mask, SIGINT) == 1 && sigismember(&mask, SIGTERM) == 1 &&
         sigismember(&mask, SIGUSR1) == 1;
}

// In a child process (a death test), since the watcher lives as long as its process.
TEST(SignalTest, TheWatcherNotesSignalsInAScopeAndQuitsOnTheSecond) {
  EXPECT_EXIT(
      {
        install_signal_watcher();
        bool worker_blocked = false;
        std::thread([&] { worker_blocked = stop_signals_blocked_here(); }).join();
        if (!signal_watcher_installed() || !stop_signals_blocked_here() || !worker_blocked)
          _exit(3);
        StopSignals scope;
        StopSignals::reset();
        // To the process: only the watcher can take it. SIGUSR1 (Slurm's warning before a time
        // limit, forwarded by mpirun) stops a run like SIGTERM.
        kill(getpid(), SIGUSR1);
        if (!wait_for_signal(SIGUSR1)) _exit(4);
        kill(getpid(), SIGINT);
        std::this_thread::sleep_for(std::chrono::seconds(10));
        _exit(5);
      },
      ::testing::ExitedWithCode(128 + SIGINT), "stopping after this step");
}

TEST(SignalTest, OutsideAScopeTheWatcherLeavesTheDefaultAction) {
  EXPECT_EXIT(
      {
        install_signal_watcher();
        { StopSignals finished; }
        kill(getpid(), SIGTERM);
        std::this_thread::sleep_for(std::chrono::seconds(10));
        _exit(5);
      },
      ::testing::KilledBySignal(SIGTERM), "");
}

// ---- training health ------------------------------------------------------------------------

TEST(HealthTest, PoisonedGradientsSkipTheUpdateAndCount) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 4;
  TrainerOptions o;
  at::Tensor before;
  o.after_backward = [&](int64_t step, Transformer& m) {
    if (step == 3) {
      before = m->head.detach().clone();
      m->head.mutable_grad().fill_(std::nan(""));
    }
  };
  {
    Trainer t(c, o);
    t.train_step();
    t.train_step();
    t.train_step();
    EXPECT_TRUE(at::equal(t.model()->head.detach(), before)) << "a poisoned step changed weights";
    t.train_step();
    EXPECT_FALSE(at::equal(t.model()->head.detach(), before));
  }  // (a run directory takes one trainer at a time)
  TrainerOptions again = o;
  again.overwrite = true;
  TrainResult r = Trainer(c, again).run();  // the run records it too
  EXPECT_EQ(r.skipped_steps, 1);
}

// A skipped step applied no update: metrics.jsonl says lr 0 for it, as last_step() does.
TEST(HealthTest, ASkippedStepLogsNoLearningRate) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.log_every = 1;
  TrainerOptions o;
  o.loss_hook = [](int64_t step, const at::Tensor& loss) {
    return step == 3 ? loss * std::nan("") : loss;
  };
  Trainer(c, o).run();
  std::ifstream metrics(fs::path(c.run.out_dir) / "metrics.jsonl");
  std::string line;
  std::map<int64_t, double> lr;
  while (std::getline(metrics, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    lr[j.at("step").get<int64_t>()] = j.at("lr").get<double>();
  }
  ASSERT_EQ(lr.size(), 6u);
  EXPECT_EQ(lr[3], 0.0);
  EXPECT_GT(lr[2], 0.0);
  EXPECT_GT(lr[4], 0.0);
}

TEST(HealthTest, TooManyConsecutiveNonFiniteStepsStopTheRun) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.max_bad_steps = 3;
  TrainerOptions o;
  o.loss_hook = [](int64_t step, const at::Tensor& loss) {
    return step >= 2 ? loss * std::nan("") : loss;
  };
  Trainer t(c, o);
  t.train_step();
  t.train_step();
  t.train_step();
  const std::string e = error_of([&] { t.train_step(); });
  EXPECT_NE(e.find("3 consecutive steps (the last: step 4) had a non-finite loss"),
            std::string::npos)
      << e;
}

TEST(HealthTest, ASpikeIsSkippedDeferredAndReplayedAndAPersistentOneScalesTheLr) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 14;
  c.train.warmup = 1;
  c.train.schedule = "constant";
  c.train.spike_window = 8;  // judging from 4 losses on
  c.train.spike_replay_after = 3;
  TrainerOptions o;
  o.loss_hook = [](int64_t step, const at::Tensor& loss) {
    return step == 7 || step == 11 || step == 12 ? loss * 50 : loss;
  };
  Trainer t(c, o);
  std::vector<int64_t> tokens;
  for (int i = 0; i < 14; ++i) {
    t.train_step();
    tokens.push_back(t.state().tokens_seen);
  }
  const int64_t per_step = c.train.grad_accum * c.train.micro_batch * c.train.seq_len;
  // Step 7 spiked: skipped; its 2 micro-batches came back as extra ones in step 10.
  EXPECT_EQ(tokens[9] - tokens[8], per_step * 2);
  // Steps 11 and 12 spiked in a row: 11 skipped (its batches come back in step 14), 12 updated
  // with a scaled LR.
  EXPECT_EQ(tokens[13] - tokens[12], per_step * 2);
  const std::string saved = t.save();
  LoadedCheckpoint ck = load_checkpoint(saved);
  HealthMonitor h;
  h.load(ck.state.health);
  EXPECT_EQ(h.spikes(), 3);
  EXPECT_EQ(h.scaled_updates(), 1);
  EXPECT_EQ(h.replayed(), 4);  // micro-batches: 2 from step 7, 2 from step 11
}

// A lasting jump of the loss level (new data, a changed schedule) is not a spike for ever: the
// first step is skipped, the persistent ones are applied with the scaled LR and join the window,
// and after a few steps the new level passes as normal.
TEST(HealthTest, ALastingShiftOfTheLossLevelIsAbsorbed) {
  HealthMonitor h(HealthOptions{5, 6.0, 50, 0.1, 100});
  int64_t step = 0;
  for (int i = 0; i < 50; ++i)
    ASSERT_EQ(h.judge(++step, 2.0 + 0.01 * (i % 3 - 1), 1.0).action, HealthMonitor::Action::Update);
  std::vector<HealthMonitor::Action> got;
  for (int i = 0; i < 10; ++i) got.push_back(h.judge(++step, 3.0, 1.0).action);
  using A = HealthMonitor::Action;
  const std::vector<A> want{A::Skip,   A::ScaledUpdate, A::ScaledUpdate, A::Update, A::Update,
                            A::Update, A::Update,       A::Update,       A::Update, A::Update};
  EXPECT_EQ(got, want);
  EXPECT_EQ(h.spikes(), 3);
  EXPECT_EQ(h.scaled_updates(), 2);
}

TEST(HealthTest, MonitorStateRoundTripsThroughJson) {
  HealthMonitor a(HealthOptions{5, 3.0, 6, 0.1, 2});
  for (int s = 1; s <= 5; ++s) a.judge(s, 2.0 + 0.01 * s, 1.0);
  EXPECT_EQ(a.judge(6, 100.0, 1.0).action, HealthMonitor::Action::Skip);
  a.defer(6, {11, 12});
  HealthMonitor b(HealthOptions{5, 3.0, 6, 0.1, 2});
  b.load(a.save());
  EXPECT_EQ(b.save(), a.save());
  EXPECT_EQ(b.judge(7, 100.0, 1.0).action, HealthMonitor::Action::ScaledUpdate);
  EXPECT_EQ(b.due(7), std::vector<int64_t>{});
  EXPECT_EQ(b.due(8), (std::vector<int64_t>{11, 12}));
  EXPECT_THROW(b.load("{\"recent_losses\": 3}"), Error);
}

TEST(HealthTest, AnAllocationFailureNamesTheConfigValuesToLower) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  TrainerOptions o;
  o.loss_hook = [](int64_t, const at::Tensor& loss) {
    at::Tensor huge = at::empty({int64_t{1} << 50}, at::kFloat);  // 4 PiB
    return loss + huge.numel();
  };
  Trainer t(c, o);
  const std::string e = error_of([&] { t.train_step(); });
  EXPECT_NE(e.find("out of memory at step 1"), std::string::npos) << e;
  EXPECT_NE(e.find("lower train.micro_batch (4), train.seq_len (16)"), std::string::npos) << e;
}

TEST(HealthTest, ImbalancedLayersAreReported) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.moe.imbalance_warn = 1.01;  // any imbalance at all
  Trainer t(c);
  testing::internal::CaptureStdout();
  t.train_step();
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("MoE layer 0 is imbalanced"), std::string::npos) << out;
}

// A collapsed layer (every token to the same top-k experts: E/k times the mean, the most top-k
// routing allows) is reported even with moe.imbalance_warn at that ceiling.
TEST(HealthTest, ACollapsedLayerIsReportedAtTheCeiling) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.moe.imbalance_warn = static_cast<double>(c.moe.num_experts) / c.moe.top_k;
  Trainer t(c);
  {
    at::NoGradGuard no_grad;
    // Equal scores everywhere: ties go to the lowest expert ids, for every token.
    for (auto& p : t.model()->named_parameters())
      if (p.key().size() > 7 && p.key().substr(p.key().size() - 7) == ".router") p.value().zero_();
  }
  testing::internal::CaptureStdout();
  t.train_step();
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("is imbalanced"), std::string::npos) << out;
}

}  // namespace
}  // namespace hetmoe
