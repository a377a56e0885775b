// `hetmoe train`: a training run from a YAML config (or a run to resume), with --set overrides.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "hetmoe/comm/communicator.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/train/checkpoint.h"
#include "hetmoe/train/trainer.h"

namespace hetmoe::cli {
namespace {
struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string resume;
  std::string out_dir;
  bool overwrite = false;
};

int run_train(const TrainArgs& a) {
  std::vector<Override> overrides;
  for (const auto& s : a.sets) overrides.push_back(parse_override(s));
  if (!a.out_dir.empty()) overrides.push_back({"run.out_dir", a.out_dir});

  std::string config_path = a.config;
  std::string resume_dir;
  if (!a.resume.empty()) {
    namespace fs = std::filesystem;
    fs::path given = fs::path(a.resume).lexically_normal();
    if (given.filename().empty()) given = given.parent_path();  // "run/checkpoints/step_N/"
    HETMOE_CHECK(fs::exists(given), "checkpoint", "'", a.resume, "' does not exist");
    fs::path run;
    // A checkpoint directory must verify itself; a run directory gives its newest checkpoint
    // that verifies (falling back past a damaged one). Either way the run continues with the
    // configuration that checkpoint was saved with, and the trainer loads the same one
    // (verified once: checkpoint.h).
    resume_dir = resumable_checkpoint(given.string());
    run = fs::path(resume_dir).parent_path().parent_path();  // <run>/checkpoints/step_N
    if (config_path.empty()) config_path = (fs::path(resume_dir) / "resolved.yaml").string();
    if (a.out_dir.empty()) overrides.insert(overrides.begin(), {"run.out_dir", run.string()});
  }
  HETMOE_CHECK(!config_path.empty(), "usage", "train needs --config FILE or --resume DIR");
  Config config = load_config(config_path, overrides);
  init_logging(launcher_rank(), config.run.log_level, config.run.log_all_ranks);
  HETMOE_LOG_INFO("config %s -> run directory %s", config_path.c_str(), config.run.out_dir.c_str());

  Trainer trainer(config, TrainerOptions{resume_dir, a.overwrite});
  const int64_t first_step = trainer.state().step;  // > 0 when resumed
  TrainResult r = trainer.run();
  // A run stopped before its first evaluation has no validation loss (-1 in TrainResult).
  char val[64] = "none (no evaluation ran)", train[64] = "none (no step ran)";
  if (r.final_val_loss >= 0) std::snprintf(val, sizeof val, "%.4f nats/token", r.final_val_loss);
  if (r.steps > first_step) std::snprintf(train, sizeof train, "%.4f", r.final_train_loss);
  HETMOE_LOG_INFO(
      "done: step %lld, %lld steps in %.1f s, %.0f tokens/s (MFU %.1f%%), peak memory %.0f MiB, "
      "final train loss %s, final val loss %s, checkpoint %s",
      static_cast<long long>(r.steps), static_cast<long long>(r.steps - first_step), r.seconds,
      r.tokens_per_s, 100.0 * r.mfu, static_cast<double>(r.peak_memory_bytes) / (1 << 20), train,
      val, r.checkpoint.empty() ? "none (train.save_final is false)" : r.checkpoint.c_str());
  return 0;
}
}  // namespace

void add_train_command(CLI::App& root, int& status) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = root.add_subcommand("train", "Train a model from a YAML config");
  cmd->add_option("-c,--config", args->config, "YAML config file (see docs/config.md)")
      ->check(CLI::ExistingFile);
  cmd->add_option("-s,--set", args->sets,
                  "Override a config value, e.g. --set train.steps=200 (repeatable; validated "
                  "like the file)")
      ->type_name("KEY=VALUE");
  cmd->add_option("--resume", args->resume,
                  "Continue the run in this run directory (or from this checkpoint directory)")
      ->type_name("DIR")
      ->check(non_empty());
  cmd->add_option("-o,--out-dir", args->out_dir, "Run directory (same as --set run.out_dir=DIR)")
      ->type_name("DIR")
      ->check(non_empty());
  cmd->add_flag("--overwrite", args->overwrite,
                "Start afresh in an out_dir that already holds a run, replacing its checkpoints "
                "and metrics");
  cmd->callback([args, &status] { status = run_train(*args); });
}

}  // namespace hetmoe::cli
