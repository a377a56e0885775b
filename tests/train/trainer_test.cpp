// Trainer: learning on a fixed batch, exact resume, run-directory protection, clear data errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "hetmoe/core/error.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/data/tokenizer.h"
#include "hetmoe/train/optimizer.h"
#include "hetmoe/train/trainer.h"
#include "support/temp_dir.h"
#include "support/train_fixture.h"

namespace fs = std::filesystem;

namespace hetmoe {
namespace {

using test_support::TempDir;

using test_support::prepare_corpus;
using test_support::tiny_config;

TEST(TrainerTest, LossOnAFixedBatchFallsByHalfWithin100Steps) {
  at::manual_seed(0);
  ModelConfig m;
  m.d_model = 64;
  m.n_layers = 2;
  m.n_heads = 4;
  m.n_kv_heads = 4;
  m.max_seq_len = 64;
  MoEConfig e;
  e.num_experts = 4;
  e.top_k = 2;
  e.expert_hidden = 64;
  Transformer model(m, e);
  model->reset_parameters(1);
  ByteTokenizer tok;
  auto ids =
      tok.encode("To be, or not to be, that is the question: whether 'tis nobler in the mind");
  at::Tensor batch = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong)
                         .narrow(0, 0, 65)
                         .unsqueeze(0)
                         .repeat({2, 1});
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
  AdamW opt(named, AdamWOptions{});
  auto loss_of = [&] {
    ForwardOutput out = model->forward(batch.narrow(1, 0, 64));
    return at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}),
                                  batch.narrow(1, 1, 64).reshape(-1)) +
           0.01 * out.aux_loss;
  };
  const double first = loss_of().item<double>();
  double last = first;
  for (int i = 0; i < 100; ++i) {
    opt.zero_grad();
    at::Tensor loss = loss_of();
    loss.backward();
    clip_grad_norm(model->parameters(), 1.0);
    opt.step(3e-3);
    last = loss.item<double>();
  }
  EXPECT_LT(last, first / 2) << "first " << first << ", after 100 steps " << last;
}

// Trains 6 steps straight, then 3 steps + save + resume + 3 steps in another run directory, and
// expects the same losses bit for bit.
void expect_exact_resume(const TempDir& dir, const Config& c) {
  std::vector<double> straight;
  {
    Trainer t(c);
    for (int i = 0; i < 6; ++i) straight.push_back(t.train_step());
  }
  Config c2 = c;
  c2.run.out_dir = dir.str("run2");
  {
    Trainer t(c2);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(t.train_step(), straight[i]);
    t.save();
  }
  Trainer resumed(c2, TrainerOptions{c2.run.out_dir, false});
  EXPECT_EQ(resumed.state().step, 3);
  for (int i = 3; i < 6; ++i) EXPECT_EQ(resumed.train_step(), straight[i]) << "step " << i + 1;
}

// bf16 compute: a step's micro-batches run inside one WeightCastScope, closed before the
// gradients are clipped and applied; a caller's own open scope is used as it is.
TEST(TrainerTest, AStepsMicroBatchesShareOneWeightCastScope) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.backend.dtype = "bf16";
  c.train.grad_accum = 2;
  std::vector<bool> during, after;
  TrainerOptions o;
  o.loss_hook = [&](int64_t, const at::Tensor& loss) {
    during.push_back(WeightCastScope::active());
    return loss;
  };
  o.after_backward = [&](int64_t, Transformer& model) {
    after.push_back(WeightCastScope::active());
    for (const auto& p : model->parameters())
      if (p.grad().defined()) EXPECT_EQ(p.grad().scalar_type(), at::kFloat);
  };
  Trainer t(c, o);
  EXPECT_TRUE(std::isfinite(t.train_step()));
  EXPECT_EQ(during, (std::vector<bool>{true, true}));
  EXPECT_EQ(after, (std::vector<bool>{false}));
  {
    WeightCastScope mine;
    EXPECT_TRUE(std::isfinite(t.train_step()));
    EXPECT_TRUE(WeightCastScope::active());
  }
  EXPECT_EQ(during.size(), 4u);
  EXPECT_EQ(after, (std::vector<bool>{false, true}));
}

TEST(TrainerTest, ResumedRunReproducesTheUninterruptedLossesExactly) {
  TempDir dir;
  prepare_corpus(dir);
  expect_exact_resume(dir, tiny_config(dir));
}

// metrics.jsonl's loss is the mean since the last logged step; a run stopped (and saved) inside
// that window and resumed must log the same means as one that ran straight through.
TEST(TrainerTest, LoggedLossesReadTheSameAfterAStopInsideTheLogWindow) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 6;
  c.train.log_every = 4;
  c.train.eval_every = 6;
  c.train.save_every = 0;
  auto logged = [](const std::string& run) {
    std::map<int64_t, double> out;
    std::ifstream in(fs::path(run) / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
    }
    return out;
  };
  Trainer(c).run();
  Config c2 = c;
  c2.run.out_dir = dir.str("run2");
  TrainerOptions stop;
  stop.on_step = [](const StepMetrics& m) {
    if (m.step == 3) raise(SIGINT);  // noted by the trainer: it saves after this step and stops
  };
  TrainResult first = Trainer(c2, stop).run();
  ASSERT_TRUE(first.interrupted);
  ASSERT_EQ(first.steps, 3);
  Trainer(c2, TrainerOptions{c2.run.out_dir}).run();
  const auto straight = logged(c.run.out_dir), resumed = logged(c2.run.out_dir);
  ASSERT_EQ(straight.size(), 2u);  // steps 4 and 6
  EXPECT_EQ(resumed, straight);
}

TEST(TrainerTest, ResumeRestoresExpertBiasAndRoutingWarmupState) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.moe.bias_update_rate = 0.01;
  c.moe.routing_warmup_steps = 5;
  expect_exact_resume(dir, c);
}

TEST(TrainerTest, RunWritesMetricsCheckpointsAndResolvedConfig) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.save_every = 3;
  TrainResult r = Trainer(c).run();
  EXPECT_EQ(r.steps, 6);
  EXPECT_GT(r.final_val_loss, 0);
  const fs::path run(c.run.out_dir);
  EXPECT_TRUE(fs::exists(run / "resolved.yaml"));
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step_00000003" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step_00000006" / "optimizer.safetensors"));
  std::ifstream latest(run / "checkpoints" / "latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step_00000006");
  std::ifstream metrics(run / "metrics.jsonl");
  std::string line;
  int lines = 0, with_val = 0;
  while (std::getline(metrics, line)) {
    ++lines;
    for (const char* key : {"\"step\"", "\"loss\"", "\"lr\"", "\"grad_norm\"", "\"tokens_per_s\""})
      EXPECT_NE(line.find(key), std::string::npos) << key << " missing in " << line;
    with_val += line.find("\"val_loss\"") != std::string::npos;
  }
  EXPECT_EQ(lines, 6);
  EXPECT_EQ(with_val, 2);
}

// run.profile_start/profile_steps: exactly the window's steps are traced (their phases and MoE
// operators in a Chrome trace) and summarised per step.
TEST(TrainerTest, ProfileWindowWritesATraceAndASummaryOfItsSteps) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.run.profile_start = 2;
  c.run.profile_steps = 2;
  EXPECT_EQ(Trainer(c).run().steps, 6);
  const fs::path prof = fs::path(c.run.out_dir) / "profile";
  std::ifstream trace_file(prof / "trace-rank0.json");
  ASSERT_TRUE(trace_file) << "no trace in " << prof;
  const nlohmann::json trace = nlohmann::json::parse(trace_file);
  std::map<std::string, int> count;
  for (const auto& e : trace.at("traceEvents"))
    if (e.contains("name") && e["name"].is_string()) count[e["name"].get<std::string>()] += 1;
  // Two steps of two micro-batches each.
  EXPECT_EQ(count["hetmoe::forward"], 4);
  EXPECT_EQ(count["hetmoe::backward"], 4);
  EXPECT_EQ(count["hetmoe::optimizer"], 2);
  EXPECT_GT(count["hetmoe::route"], 0);
  EXPECT_GT(count["hetmoe::experts"], 0);
  const std::string summary = test_support::file_text(prof / "summary-rank0.txt");
  EXPECT_NE(summary.find("steps 2..3 (2) on cpu"), std::string::npos) << summary;
  for (const char* part : {"hetmoe::forward", "hetmoe::optimizer", "host operators by self time"})
    EXPECT_NE(summary.find(part), std::string::npos) << part << " missing in\n" << summary;
}

// A window that runs past the last step traces the steps there are.
TEST(TrainerTest, AProfileWindowPastTheLastStepEndsWithTheRun) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.run.profile_start = 5;
  c.run.profile_steps = 5;
  EXPECT_EQ(Trainer(c).run().steps, 6);
  const fs::path summary_path = fs::path(c.run.out_dir) / "profile" / "summary-rank0.txt";
  ASSERT_TRUE(fs::exists(summary_path));
  const std::string summary = test_support::file_text(summary_path);
  EXPECT_NE(summary.find("steps 5..6 (2) on cpu"), std::string::npos) << summary;
}

TEST(TrainerTest, RefusesToOverwriteARunUnlessAsked) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 3;
  Trainer(c).run();
  dir.write("run/notes.txt", "mine");
  try {
    Trainer again(c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds a run; continue it (--resume"),
              std::string::npos)
        << e.what();
  }
  Trainer(c, TrainerOptions{"", /*overwrite=*/true}).run();
  // --overwrite replaces the run's own files and nothing else.
  EXPECT_TRUE(fs::exists(dir.path() / "run" / "notes.txt"));
}

// An overwrite that fails a check (here: the data) leaves the old run as it was.
TEST(TrainerTest, AnOverwriteThatFailsItsChecksRemovesNothing) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 3;
  Trainer(c).run();
  const fs::path run = dir.path() / "run";
  ASSERT_TRUE(fs::exists(run / "checkpoints") && fs::exists(run / "metrics.jsonl"));
  Config bad = c;
  bad.data.path = dir.str("no-such-data");
  EXPECT_THROW(Trainer(bad, TrainerOptions{"", /*overwrite=*/true}), Error);
  EXPECT_TRUE(fs::exists(run / "checkpoints"));
  EXPECT_TRUE(fs::exists(run / "metrics.jsonl"));
  EXPECT_TRUE(fs::exists(run / "resolved.yaml"));
}

// --overwrite keeps the old run aside until the new one has a checkpoint: a new run that fails
// at its first step (here: a callback throws) gives the old one back; one that succeeds removes
// it.
TEST(TrainerTest, AnOverwritingRunThatFailsBeforeItsFirstCheckpointRestoresTheOldRun) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.steps = 4;
  Trainer(c).run();
  const fs::path run = dir.path() / "run";
  auto text = [](const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string metrics = text(run / "metrics.jsonl");
  TrainerOptions failing{"", /*overwrite=*/true};
  failing.on_step = [](const StepMetrics&) { throw std::runtime_error("boom"); };
  EXPECT_THROW(Trainer(c, failing).run(), std::runtime_error);
  EXPECT_EQ(text(run / "metrics.jsonl"), metrics);
  EXPECT_EQ(load_checkpoint(run.string()).state.step, 4);
  EXPECT_FALSE(fs::exists(run / ".replaced-run"));
  // A replacement killed before its first checkpoint (no destructor ran) leaves the old run set
  // aside beside its own resolved.yaml: the next trainer on that directory puts it back.
  fs::create_directories(run / ".replaced-run");
  for (const char* a : {"checkpoints", "metrics.jsonl", "resolved.yaml"})
    fs::rename(run / a, run / ".replaced-run" / a);
  std::ofstream(run / "resolved.yaml") << "# a replacement that died\n";
  EXPECT_EQ(Trainer(c, TrainerOptions{run.string()}).state().step, 4);
  EXPECT_EQ(text(run / "metrics.jsonl"), metrics);
  EXPECT_FALSE(fs::exists(run / ".replaced-run"));
  Config shorter = c;
  shorter.train.steps = 3;
  Trainer(shorter, TrainerOptions{"", /*overwrite=*/true}).run();
  EXPECT_EQ(load_checkpoint(run.string()).state.step, 3);
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step_00000004"));
  EXPECT_FALSE(fs::exists(run / ".replaced-run"));
}

// Resuming run A with run.out_dir at another run B would mix the two: refused unless B is to be
// replaced; an empty directory takes the continued run (a fork).
TEST(TrainerTest, ResumingIntoAnotherRunsDirectoryIsRefusedUnlessReplacing) {
  TempDir dir;
  prepare_corpus(dir);
  Config a = tiny_config(dir);
  a.train.steps = 3;
  a.run.out_dir = dir.str("a");
  Trainer(a).run();
  Config b = a;
  b.run.out_dir = dir.str("b");
  Trainer(b).run();
  Config cont = a;
  cont.train.steps = 4;
  cont.run.out_dir = dir.str("b");
  try {
    Trainer t(cont, TrainerOptions{dir.str("a")});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds another run than the one being resumed"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(fs::exists(dir.path() / "b" / "checkpoints" / "latest"));
  // Continuing in its own directory needs no overwrite.
  Config own = a;
  own.train.steps = 4;
  EXPECT_EQ(Trainer(own, TrainerOptions{dir.str("a")}).run().steps, 4);
  // A fork into an empty directory.
  cont.run.out_dir = dir.str("fork");
  EXPECT_EQ(Trainer(cont, TrainerOptions{dir.str("a")}).run().steps, 4);
  EXPECT_TRUE(fs::exists(dir.path() / "fork" / "resolved.yaml"));
}

TEST(TrainerTest, DataTooShortForTheWindowIsAnErrorBeforeTraining) {
  TempDir dir;
  prepare_corpus(dir);
  Config c = tiny_config(dir);
  c.train.seq_len = 32;
  c.model.max_seq_len = 100000;
  c.train.seq_len = 50000;
  try {
    Trainer t(c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than train.seq_len + 1"), std::string::npos)
        << e.what();
  }
}

TEST(TrainerTest, MissingDatasetNamesThePath) {
  TempDir dir;
  Config c = tiny_config(dir);
  try {
    Trainer t(c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(c.data.path), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hetmoe
