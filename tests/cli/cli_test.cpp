// The hetmoe executable: exit codes and one-line messages for bad flags, files and configs,
// and a short end-to-end run (prepare -> train -> resume -> generate).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hetmoe/train/trainer.h"
#include "support/cli_runner.h"
#include "support/ramp_source.h"
#include "support/temp_dir.h"
#include "support/train_fixture.h"

namespace hetmoe {
namespace {

using test_support::TempDir;

using test_support::expect_contains;
using test_support::Result;
using test_support::run;

// A prepared corpus and a tiny config pointing at it.
struct Fixture {
  TempDir dir;
  std::string config;
  Fixture() {
    std::string text;
    for (int i = 0; i < 300; ++i) text += "line " + std::to_string(i) + " of a small corpus\n%\n";
    dir.write("corpus.txt", text);
    config = dir.write("c.yaml",
                       "model: {d_model: 32, n_layers: 2, n_heads: 2, n_kv_heads: 1, "
                       "max_seq_len: 64, first_k_dense: 1, dense_ffn_hidden: 32}\n"
                       "moe: {num_experts: 4, top_k: 2, expert_hidden: 16}\n"
                       "train: {steps: 4, micro_batch: 2, seq_len: 16, warmup: 1, eval_every: 2,"
                       " eval_batches: 1, log_every: 1, threads: 1}\n"
                       "data: {path: " +
                           dir.str("data") +
                           "}\n"
                           "run: {out_dir: " +
                           dir.str("run") + "}\n");
  }
  Result prepare() {
    return run("data prepare --input " + dir.str("corpus.txt") + " --out " + dir.str("data") +
               " --separator %");
  }
};

// Usage errors: exit 2 and one line that names the flag (or command) and what is wrong with it.
TEST(CliTest, UnknownFlagIsAUsageError) {
  Result r = run("train --no-such-flag");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "--no-such-flag");
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "one line:\n" << r.output;
  r = run("trian");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "unknown command 'trian' (commands: train, data");
  r = run("generate --checkpoint x --prompt a --top-k -1");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "--top-k: '-1' is not a finite number >= 0");
  r = run("generate --checkpoint x --prompt ''");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "--prompt");
  // Seeds are whole numbers in [0, 2^64 - 1] for every command (CLI11 would wrap -1 and clamp
  // larger values, silently).
  for (const std::string bad : {"-1", "18446744073709551616", "1.5", "1e3"}) {
    r = run("generate --checkpoint x --prompt a --seed " + bad);
    EXPECT_EQ(r.code, 2) << bad;
    expect_contains(r, "--seed: '" + bad + "' is not a whole number in [0, 18446744073709551615]");
    r = run("data prepare --input x --out y --seed " + bad);
    EXPECT_EQ(r.code, 2) << bad;
    expect_contains(r, "--seed: '" + bad + "' is not a whole number");
  }
  // A subnormal temperature is a finite number: past the flags, to the missing checkpoint.
  r = run("generate --checkpoint /nonexistent --prompt a --temperature 4.9e-324");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "'/nonexistent' does not exist");
  r = run("data prepare --input x --out y --val-fraction abc");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "--val-fraction: 'abc' is not a finite number");
}

TEST(CliTest, HostMallocSettingIsShownAndAMeaninglessOneRefused) {
  Result shown = run("devices");
  EXPECT_EQ(shown.code, 0);
  expect_contains(shown, "host_malloc: ");
  setenv("HETMOE_HOST_MALLOC", "sytem", 1);
  Result r = run("version");
  unsetenv("HETMOE_HOST_MALLOC");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "hetmoe: error: HETMOE_HOST_MALLOC='sytem' is not 'keep' or 'system'");
}

TEST(CliTest, MissingSubcommandIsAUsageError) {
  EXPECT_EQ(run("").code, 2);
}

TEST(CliTest, MissingConfigFileIsNamed) {
  Result r = run("train --config /nonexistent/cfg.yaml");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "/nonexistent/cfg.yaml");
}

TEST(CliTest, TrainHelpDocumentsEveryFlag) {
  Result r = run("train --help");
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--config", "--set", "--resume", "--out-dir", "--overwrite"})
    expect_contains(r, flag);
}

TEST(CliTest, TrainWithoutConfigOrResumeFails) {
  Result r = run("train");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "needs --config FILE or --resume DIR");
  // An empty value is not "not given": it would silently fall back to the config's out_dir.
  r = run("train --config " + std::string(HETMOE_SOURCE_DIR) + "/configs/tiny.yaml --out-dir ''");
  EXPECT_EQ(r.code, 2);
  expect_contains(r, "must not be empty");
  r = run("train --resume ''");
  EXPECT_EQ(r.code, 2);
}

TEST(CliTest, BadConfigValueAndUnknownOverrideAreOneLineErrors) {
  Fixture f;
  Result r = run("train --config " + f.config + " --set moe.top_k=9");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "moe.top_k (9) must be <= moe.num_experts (4)");
  r = run("train --config " + f.config + " --set moe.num_expert=2");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "did you mean 'moe.num_experts'");
  r = run("train --config " + f.config + " --set moe.num_experts");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "expected key=value");
}

TEST(CliTest, MissingDataIsNamed) {
  Fixture f;
  Result r = run("train --config " + f.config);
  EXPECT_EQ(r.code, 1);
  expect_contains(r, f.dir.str("data"));
}

TEST(CliTest, DataPrepareMissingInputFails) {
  TempDir dir;
  Result r = run("data prepare --input " + dir.str("nope") + " --out " + dir.str("out"));
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "does not exist");
}

TEST(CliTest, GenerateFromMissingCheckpointFails) {
  TempDir dir;
  Result r = run("generate --checkpoint " + dir.str("nope") + " --prompt hi");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "does not exist");
}

TEST(CliTest, PrepareTrainResumeGenerate) {
  Fixture f;
  ASSERT_EQ(f.prepare().code, 0);
  Result r = run("train --config " + f.config + " --set train.steps=2");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "step 2/2");
  // A second fresh run into the same directory is refused, and nothing is lost.
  r = run("train --config " + f.config);
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "already holds a run");
  // A resume under a grid that does not fit says which launch the checkpoint needs.
  r = run("train --resume " + f.dir.str("run") +
          " --set train.steps=4 --set parallel.expert_parallel=2");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "does not divide the world of 1");
  expect_contains(r,
                  "was written by 1 rank(s) with parallel.expert_parallel 1: resume it with "
                  "that grid (mpirun -np 1), or reshard it to this launch with --set "
                  "parallel.expert_parallel=P, P one of 1");
  r = run("train --resume " + f.dir.str("run") + " --set train.steps=4");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "resumed from");
  expect_contains(r, "step 4/4");
  r = run("generate --checkpoint " + f.dir.str("run") + " --prompt line --tokens 20 --seed 3");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "line");
}

// --resume RUN falls back past a damaged newest checkpoint, as the library does.
TEST(CliTest, ResumeOfARunDirectoryFallsBackPastADamagedCheckpoint) {
  Fixture f;
  ASSERT_EQ(f.prepare().code, 0);
  Result r = run("train --config " + f.config + " --set train.steps=3 --set train.save_every=1");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string model = f.dir.str("run/checkpoints/step_00000003/model.safetensors");
  ASSERT_EQ(::truncate(model.c_str(), 100), 0);
  r = run("train --resume " + f.dir.str("run") + " --set train.steps=4");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "trying an older checkpoint");
  expect_contains(r, "step_00000002 at step 2");
  expect_contains(r, "step 4/4");
  // A checkpoint past train.steps is refused, not resumed into doing nothing.
  r = run("train --resume " + f.dir.str("run") + " --set train.steps=3");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "is at step 4, past train.steps 3");
  // The run continues with the configuration of the checkpoint it resumes, not with the run's
  // top-level resolved.yaml (rewritten by every attempt, a failed one too); a trailing '/' on a
  // checkpoint path still names its run.
  r = run("train --resume " + f.dir.str("run/checkpoints/step_00000004/") + " --set train.steps=5");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r,
                  "checkpoints/step_00000004/resolved.yaml -> run directory " + f.dir.str("run"));
  EXPECT_FALSE(std::filesystem::exists(f.dir.path() / "run" / "checkpoints" / "metrics.jsonl"));
  // A finished run resumed again has nothing to do; it names the checkpoint it holds.
  r = run("train --resume " + f.dir.str("run") + " --set train.steps=5");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "done: step 5, 0 steps in");
  expect_contains(r, "the run is already at step 5 of train.steps 5: nothing to train");
  expect_contains(r, "final train loss none (no step ran)");
  expect_contains(r, "checkpoint " + f.dir.str("run/checkpoints/step_00000005"));
}

// Sets environment variables for the runs inside its scope (the CLI inherits them).
class EnvScope {
 public:
  explicit EnvScope(std::vector<std::pair<std::string, std::string>> vars)
      : vars_(std::move(vars)) {
    for (const auto& [k, v] : vars_) ::setenv(k.c_str(), v.c_str(), 1);
  }
  ~EnvScope() {
    for (const auto& kv : vars_) ::unsetenv(kv.first.c_str());
  }

 private:
  std::vector<std::pair<std::string, std::string>> vars_;
};

// A launcher's environment that MPI does not share (srun with an MPI lacking Slurm's PMI): each
// process would train alone in the same run directory. Refused before anything is written, except
// task 0 of a Slurm batch script, a legitimate one-process run.
TEST(CliTest, ALauncherWorldThatMpiDoesNotSeeIsRefused) {
  Fixture f;
  ASSERT_EQ(f.prepare().code, 0);
  const std::string train = "train --config " + f.config + " --set train.steps=2";
  {
    EnvScope env({{"PMI_SIZE", "3"}, {"PMI_RANK", "0"}});
    Result r = run(train);
    if (r.output.find("built without MPI") != std::string::npos) GTEST_SKIP() << r.output;
    EXPECT_EQ(r.code, 1) << r.output;
    expect_contains(r,
                    "[comm] the launcher's environment says 3 ranks (PMI_SIZE) but "
                    "MPI_COMM_WORLD has 1");
  }
  {
    EnvScope env({{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "1"}});
    Result r = run(train);
    EXPECT_EQ(r.code, 1) << r.output;
    expect_contains(r, "says 2 ranks (SLURM_NTASKS)");
  }
  EXPECT_FALSE(std::filesystem::exists(f.dir.str("run")));
  {
    EnvScope env({{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}});
    Result r = run(train);
    EXPECT_EQ(r.code, 0) << r.output;
    expect_contains(r, "SLURM_NTASKS is 2 but MPI started this process alone");
  }
}

// Top-1 routing with renormalised weights trains, but its router gets no gradient from the
// language-model loss: the run says so once.
TEST(CliTest, TopOneRoutingWithRenormalisationIsWarnedAbout) {
  Fixture f;
  ASSERT_EQ(f.prepare().code, 0);
  Result r = run("train --config " + f.config + " --set train.steps=2 --set moe.top_k=1");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_contains(r, "moe.top_k is 1 and moe.renormalize is on");
  r = run("train --config " + f.config +
          " --set train.steps=2 --set moe.top_k=1 --set moe.renormalize=false --overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("moe.renormalize is on"), std::string::npos) << r.output;
}

// A model trained on ids from a data source of one's own (data.tokenizer none) has no text to
// decode: generate says so instead of printing bytes that mean nothing.
TEST(CliTest, GenerateRefusesAModelWithoutTheByteTokenizer) {
  TempDir dir;
  Config c = test_support::tiny_config(dir);
  c.data.tokenizer = "none";
  c.model.vocab_size = 32;
  c.train.steps = 3;
  c.train.eval_every = 3;
  TrainerOptions o;
  o.data = std::make_shared<test_support::RampSource>(32);
  Trainer(c, o).run();
  Result r = run("generate --checkpoint " + dir.str("run") + " --prompt hi");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "was trained with data.tokenizer 'none': generate turns text into bytes");
}

// A prepared (byte) dataset is not ids of a source of one's own: data.tokenizer none is refused.
TEST(CliTest, TrainRefusesADatasetOfAnotherTokenizer) {
  Fixture f;
  ASSERT_EQ(f.prepare().code, 0);
  Result r = run("train --config " + f.config + " --set train.steps=2 --set data.tokenizer=none");
  EXPECT_EQ(r.code, 1);
  expect_contains(r, "was written by the 'byte' tokenizer, but data.tokenizer is 'none'");
}

TEST(CliTest, DevicesAndVersion) {
  Result r = run("devices");
  EXPECT_EQ(r.code, 0);
  expect_contains(r, "cpu backend: available");
  r = run("version");
  EXPECT_EQ(r.code, 0);
  expect_contains(r, "hetmoe 0.");
  expect_contains(r, "libtorch 2.");
}

}  // namespace
}  // namespace hetmoe
