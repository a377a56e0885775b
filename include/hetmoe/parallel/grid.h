// The process grid of a run: world = data_parallel x expert_parallel. Ranks r with the same
// r / expert_parallel form an expert-parallel group (they split each MoE layer's experts);
// ranks with the same r % expert_parallel form a data-parallel group (they hold the same experts
// and average those experts' gradients). Every rank reads its own slice of each global batch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "hetmoe/comm/communicator.h"
#include "hetmoe/model/layers.h"

namespace hetmoe {

class ProcessGrid {
 public:
  // Splits `world` into the expert- and data-parallel groups. Throws hetmoe::Error naming the
  // values when expert_parallel does not divide the world size or num_experts.
  ProcessGrid(std::unique_ptr<Communicator> world, int64_t expert_parallel, int64_t num_experts);

  Communicator& world() { return *world_; }
  Communicator& expert_group() { return *ep_; }  // size expert_parallel
  Communicator& data_group() { return *dp_; }    // size world / expert_parallel

  int rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }
  int expert_parallel() const { return ep_->size(); }
  int data_parallel() const { return dp_->size(); }
  // The experts of every MoE layer this rank holds.
  ExpertShard expert_shard() const { return shard_; }
  // The step named in communication errors, on all three communicators.
  void set_step(int64_t step);
  // "world 4 = data 2 x expert 2 (mpi)"
  std::string describe() const;

 private:
  std::unique_ptr<Communicator> world_, ep_, dp_;
  ExpertShard shard_;
};

}  // namespace hetmoe
