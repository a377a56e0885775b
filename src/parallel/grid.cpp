#include "hetmoe/parallel/grid.h"

#include "hetmoe/core/error.h"

namespace hetmoe {

ProcessGrid::ProcessGrid(std::unique_ptr<Communicator> world, int64_t expert_parallel,
                         int64_t num_experts)
    : world_(std::move(world)) {
  const int64_t w = world_->size();
  HETMOE_CHECK(expert_parallel >= 1 && w % expert_parallel == 0, "parallel",
               "parallel.expert_parallel ", expert_parallel, " does not divide the world of ", w,
               " rank", w == 1 ? "" : "s", "; launch a multiple of ", expert_parallel,
               " ranks or change parallel.expert_parallel");
  HETMOE_CHECK(num_experts % expert_parallel == 0, "parallel", "moe.num_experts ", num_experts,
               " is not divisible by parallel.expert_parallel ", expert_parallel);
  const int r = world_->rank();
  const int ep = static_cast<int>(expert_parallel);
  ep_ = world_->split(r / ep, r, "expert");
  dp_ = world_->split(r % ep, r, "data");
  const int64_t local = num_experts / expert_parallel;
  shard_ = ExpertShard{ep_->rank() * local, local};
}

void ProcessGrid::set_step(int64_t step) {
  world_->set_step(step);
  ep_->set_step(step);
  dp_->set_step(step);
}

std::string ProcessGrid::describe() const {
  return detail::concat("world ", world_->size(), " = data ", dp_->size(), " x expert ",
                        ep_->size(), " (", world_->backend(), ")");
}

}  // namespace hetmoe
