// The checkpoint manifest (state.json) as data, parsed and validated without LibTorch, so the
// fuzz target can reach it (tests/fuzz) and a damaged file is refused with a clear message.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace hetmoe {

struct FileDigest {
  int64_t bytes = 0;
  std::string fnv1a64;  // 16 lower-case hex digits
};

struct CheckpointManifest {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  double last_val_loss = -1;
  double log_loss_sum = 0;  // TrainState's log window (absent in older checkpoints: 0)
  int64_t log_steps = 0;
  int world_size = 1;
  int64_t expert_parallel = 1;
  std::string health = "{}";  // the training-health monitor's state, JSON
  // Every file of the checkpoint with its size and checksum; empty for checkpoints written
  // before checksums existed. Names are plain file names inside the checkpoint directory.
  std::map<std::string, FileDigest> files;
};

// Throws hetmoe::Error("[checkpoint] <source>: ...") naming the first problem: not JSON, not a
// hetmoe checkpoint, a missing or mistyped field, a value out of range, a file name that is not a
// plain name (no '/', no "..").
CheckpointManifest parse_checkpoint_manifest(const std::string& text, const std::string& source);

}  // namespace hetmoe
