// The training loop: data -> model -> loss (cross-entropy + router losses) -> AdamW, with
// schedules, clipping, accumulation, evaluation, metrics.jsonl and checkpoints.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hetmoe/config/config.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/model/transformer.h"
#include "hetmoe/parallel/grid.h"
#include "hetmoe/train/checkpoint.h"
#include "hetmoe/train/health.h"

namespace hetmoe {

class Backend;
class AdamW;
class AllToAllExchange;

// What one optimizer step measured: the argument of TrainerOptions::on_step. Losses and loads are
// of the global batch (the same on every rank).
struct StepMetrics {
  int64_t step = 0;      // 1-based, the step just taken
  double loss = 0;       // mean cross-entropy of the step's micro-batches (nats/token)
  double aux_loss = 0;   // balance loss, unscaled (moe.aux_loss_coef multiplies it)
  double z_loss = 0;     // router z-loss, unscaled
  double lr = 0;         // the learning rate the update used (0 when it was skipped)
  double grad_norm = 0;  // global gradient norm before clipping (inf/nan when non-finite)
  bool skipped = false;  // the health monitor skipped this update (non-finite or a spike)
  double seconds = 0;    // wall time of the step
  double tokens_per_s = 0;
  // Tokens routed to each expert in this step, one vector per MoE layer (layer order).
  std::vector<std::vector<int64_t>> expert_load;
};

struct TrainerOptions {
  std::string resume;      // run or checkpoint directory to continue from ("" = fresh run)
  bool overwrite = false;  // allow a fresh run into an out_dir that already holds a run
  // The training data; nullptr opens the prepared dataset at config.data.path.
  std::shared_ptr<DataSource> data;
  // Callbacks of run() (every rank calls its own; exceptions propagate and stop the run).
  // on_step: after every optimizer step. on_eval: after each evaluation, with the mean validation
  // cross-entropy. on_checkpoint: after a checkpoint is written, with its directory.
  std::function<void(const StepMetrics&)> on_step;
  std::function<void(int64_t step, double val_loss)> on_eval;
  std::function<void(int64_t step, const std::string& dir)> on_checkpoint;
  // Test and research hooks. loss_hook may replace a micro-batch's cross-entropy before the
  // backward pass (inject a spike or a NaN); after_backward runs once the step's gradients exist
  // and before they are synchronised and clipped (poison or inspect them). `step` is 1-based.
  std::function<at::Tensor(int64_t step, const at::Tensor& loss)> loss_hook;
  std::function<void(int64_t step, Transformer& model)> after_backward;
};

struct TrainResult {
  int64_t steps = 0;  // the step reached (a resumed run counts from its checkpoint's step)
  double final_train_loss = 0;
  double final_val_loss = 0;  // -1 when no evaluation ran (a run stopped before its first)
  double tokens_per_s = 0;    // mean over the steps this run took
  double mfu = 0;             // model FLOP utilisation at that rate (0 when the peak is unknown)
  int64_t peak_memory_bytes = 0;  // device memory high-water mark (host RSS on the CPU)
  double seconds = 0;
  int64_t skipped_steps = 0;  // updates skipped (non-finite loss or gradients, loss spikes)
  bool interrupted = false;   // stopped early by SIGINT/SIGTERM, after saving a checkpoint
  std::string checkpoint;     // the last checkpoint written
};

class Trainer {
 public:
  // Validates the run directory, opens the data, builds the model (and restores a checkpoint when
  // options.resume is set). Throws hetmoe::Error on any problem, before any training.
  Trainer(Config config, TrainerOptions options = {});
  ~Trainer();

  // Trains until config.train.steps, evaluating and checkpointing as configured.
  TrainResult run();
  // One optimizer step (all micro-batches); returns the mean training loss of the step
  // (cross-entropy only, without the router losses).
  double train_step();
  // Mean cross-entropy (nats/token) over train.eval_batches fixed validation windows.
  double evaluate();
  // Writes a checkpoint now (and calls on_checkpoint); returns its directory. A step already
  // saved is not written again (its directory is returned).
  std::string save();
  // The last step's measurements (what on_step received; seconds and tokens_per_s are filled by
  // run() only).
  StepMetrics last_step() const;

  const Config& config() const { return config_; }
  // The process grid (world 1 for a single-process run).
  ProcessGrid& grid() { return *grid_; }
  const TrainState& state() const { return state_; }
  Transformer& model() { return model_; }

 private:
  // What train_step measured, for the log line and metrics.jsonl.
  struct StepRecord {
    double loss = 0, aux = 0, z = 0, grad_norm = 0, lr = 0;
    bool skipped = false;
    std::vector<at::Tensor> load;  // tokens per expert, per MoE layer
  };
  int64_t peak_memory() const;
  double train_step_unguarded();
  Error out_of_memory(const std::string& what) const;
  // Imbalance and idle-expert warnings from this step's tokens per expert (per MoE layer).
  void watch_experts(int64_t step, const std::vector<at::Tensor>& load);
  // The stop signal any rank received (the same on every rank), or 0.
  int stop_requested();
  bool is_rank0() const;
  CheckpointShard checkpoint_shard() const;
  // Rows first .. first+local_batch of the global micro-batch `stream_step` of the split.
  at::Tensor local_batch(Split split, uint64_t stream_step) const;
  void record(const StepRecord& r, double tokens_per_s, double elapsed, int64_t first_step,
              double val_loss);

  Config config_;
  TrainerOptions options_;
  std::unique_ptr<DirectoryLock> run_lock_;  // rank 0's lock on run.out_dir, released last
  c10::Device device_{c10::kCPU};
  const Backend* backend_ = nullptr;  // the backend of device_
  std::unique_ptr<ProcessGrid> grid_;
  std::shared_ptr<AllToAllExchange> exchange_;  // set when the world has more than one rank
  std::vector<at::Tensor> shared_params_, expert_params_;
  int64_t local_batch_ = 0;  // this rank's share of train.micro_batch
  std::shared_ptr<DataSource> data_;
  Transformer model_{nullptr};
  std::unique_ptr<AdamW> optimizer_;
  TrainState state_;
  int64_t saved_step_ = -1;  // the step last_checkpoint_ holds
  // --overwrite moved the old run aside (rank 0); it is restored if this run ends before its
  // first checkpoint, removed by commit_replacement() once it has one or run() returns.
  bool replaced_pending_ = false;
  void commit_replacement();
  HealthMonitor health_;
  std::vector<std::vector<int64_t>> idle_steps_;  // per MoE layer, per expert
  int64_t last_imbalance_warning_ = -1000000;
  double flops_per_token_ = 0;  // training FLOPs per token, for MFU
  double peak_flops_ = 0;       // the device's peak in the compute dtype (0: unknown)
  std::string last_checkpoint_;
  bool metrics_failing_ = false;  // the last metrics.jsonl append failed
  StepRecord last_;
};

}  // namespace hetmoe
