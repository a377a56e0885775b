// Checkpoints: <out_dir>/checkpoints/step_NNNNNNNN/ holding model.safetensors,
// optimizer.safetensors, state.json and resolved.yaml, written into a temporary directory and
// renamed into place, with <out_dir>/checkpoints/latest naming the newest one.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "hetmoe/comm/communicator.h"
#include "hetmoe/config/config.h"
#include "hetmoe/train/manifest.h"

namespace hetmoe {

// Trainer progress that a resume restores. The data sampler and the per-step random streams are
// pure functions of (seed, step), so the step is their whole state.
struct TrainState {
  int64_t step = 0;         // optimizer steps completed
  int64_t tokens_seen = 0;  // training tokens consumed
  double last_val_loss = -1;
  // The training losses summed since the last logged step, and how many: the next log line's
  // mean covers them, so it reads the same after a resume as without one.
  double log_loss_sum = 0;
  int64_t log_steps = 0;
  // The training-health monitor's state (recent losses, deferred batches, counters) as JSON,
  // so a resumed run makes the same skip decisions; "" when there is none.
  std::string health;
};

// Tensors <-> safetensors files (moved to CPU; fp32, bf16, fp16, int64, int32, uint8, bool).
// `metadata` joins the file's "__metadata__" (format "pt", producer "hetmoe").
void save_tensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                  const std::map<std::string, std::string>& metadata = {});
std::map<std::string, at::Tensor> load_tensors(const std::string& path);

// Which part of a multi-rank run's state this process holds. With world > 1 every rank writes
// its own model-rankRRRRR-of-WWWWW.safetensors and optimizer-... into the same checkpoint
// directory, and rank 0 writes state.json (the manifest: grid and shard files), resolved.yaml
// and the latest pointer once every shard is on disk. `comm` is the world communicator. Each
// shard file records its place ("hetmoe.shard": "rank R of W, expert_parallel P" in its
// metadata), and loading refuses a file that is not the shard its name says.
struct CheckpointShard {
  int rank = 0;
  int world = 1;
  int64_t expert_parallel = 1;
  Communicator* comm = nullptr;  // required when world > 1
};

// Writes a checkpoint for state.step; returns its directory.
std::string save_checkpoint(const std::string& out_dir, const Config& config,
                            const TrainState& state,
                            const std::map<std::string, at::Tensor>& model_state,
                            const std::map<std::string, at::Tensor>& optimizer_state,
                            const CheckpointShard& shard = {});

// Checks every file the checkpoint's manifest lists against its recorded size and checksum
// (without `optimizer`, all but the optimizer shards: what the model alone needs);
// throws hetmoe::Error("[checkpoint] '<file>' is truncated/corrupt/missing ...").
void verify_checkpoint(const std::string& dir, bool optimizer = true);

// Resolves a user-given path to a checkpoint directory: a checkpoint directory itself, or a run
// directory (its checkpoints/latest). Throws hetmoe::Error("[checkpoint] ...") when none exists.
std::string find_checkpoint(const std::string& path);

// A checkpoint directory's manifest (state.json), parsed but not verified against its files.
CheckpointManifest read_checkpoint_manifest(const std::string& dir);

// The checkpoint a resume from `path` would load, verified: a checkpoint directory must verify
// itself; a run directory gives the newest checkpoint that verifies, from the one
// checkpoints/latest names back to older ones (or every one, newest first, when latest is
// missing or broken). Throws hetmoe::Error("[checkpoint] ...") when none verifies.
std::string resumable_checkpoint(const std::string& path);

struct LoadedCheckpoint {
  std::string dir;
  Config config;
  TrainState state;
  std::map<std::string, at::Tensor> model;
  std::map<std::string, at::Tensor> optimizer;  // empty when load_optimizer is false
};

// Loads this rank's shard after verifying the checkpoint's checksums (the optimizer shards only
// when `load_optimizer`: a checkpoint copied without them loads its model). Given a run
// directory, a checkpoint that does not verify is skipped, with a warning, for the newest one
// that does. Given a checkpoint directory, it must verify.
// A checkpoint written by another grid (world size or expert_parallel) is resharded when
// `is_expert` says which tensors are split over the expert-parallel ranks (along dim 0, one row
// per expert; for the model and for the optimizer state, whose "exp_avg/<name>" keys end as the
// parameter's do: the trainer passes TransformerImpl::is_expert_parameter). Every other tensor
// comes from rank 0's files, and this rank's experts (shard.expert_parallel's split of
// moe.num_experts) are cut from the shards of the writing grid's first expert group, copying only
// the rows this rank keeps. Without `is_expert`, another grid is refused with a message naming
// both grids, unless every rank of both holds every expert (expert_parallel 1 in both).
LoadedCheckpoint load_checkpoint(const std::string& path, bool load_optimizer = true,
                                 const CheckpointShard& shard = {},
                                 const std::function<bool(const std::string&)>& is_expert = {});

// The whole model from any checkpoint, written by one process or by a multi-rank grid, for
// generation or evaluation in one process (is_expert may be empty for a checkpoint written
// with expert_parallel 1). Each expert tensor (is_expert(name): see
// Transformer::is_expert_parameter) is the concatenation along dim 0 of the shards of the first
// expert group's ranks, 0 .. expert_parallel - 1, which together hold every expert; every other
// tensor comes from rank 0 (all ranks hold the same). Verified as load_checkpoint does without
// its optimizer state, which it neither loads nor needs: generation works from a checkpoint
// copied without its optimizer-*.safetensors.
LoadedCheckpoint load_whole_model(const std::string& path,
                                  const std::function<bool(const std::string&)>& is_expert);

}  // namespace hetmoe
