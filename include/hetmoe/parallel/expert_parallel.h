// Expert parallelism over a communicator: the token dispatcher (an ExpertExchange for the MoE
// layers), its differentiable all-to-all, and the gradient synchronisation of a sharded model.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "hetmoe/model/layers.h"
#include "hetmoe/parallel/grid.h"

namespace hetmoe {

// Uneven all-to-all along dim 0 (Communicator::all_to_all) as an autograd function: its backward
// is the all-to-all with the splits swapped. When given, the seconds spent in the forward and in
// the backward exchange are added to *forward_seconds and *backward_seconds.
at::Tensor differentiable_all_to_all(Communicator& comm, const at::Tensor& input,
                                     const std::vector<int64_t>& send_splits,
                                     const std::vector<int64_t>& recv_splits,
                                     double* forward_seconds = nullptr,
                                     double* backward_seconds = nullptr);

// The token dispatcher. dispatch: exchange tokens-per-expert counts with an all-to-all, send each
// row to the rank owning its expert (uneven all-to-all), and regroup the received rows by local
// expert. combine: the exact inverse. An expert that receives no rows anywhere is fine.
// With `overlap` (parallel.overlap_shared_experts), dispatch_overlapped begins the row exchange,
// runs the caller's work (the shared experts) and only then waits for the rows.
class AllToAllExchange final : public ExpertExchange {
 public:
  AllToAllExchange(ProcessGrid& grid, int64_t num_experts, bool overlap = true);
  Dispatched dispatch(const at::Tensor& rows, const at::Tensor& tokens_per_expert) override;
  Dispatched dispatch_overlapped(const at::Tensor& rows, const at::Tensor& tokens_per_expert,
                                 const std::function<void()>& overlap) override;
  at::Tensor combine(const at::Tensor& rows, const Dispatched& dispatched) override;
  at::Tensor sum_over_token_ranks(const at::Tensor& t) override;
  int64_t token_ranks() const override { return grid_.world_size(); }
  int64_t token_rank() const override { return grid_.rank(); }

  // Seconds spent moving rows towards the experts (dispatch forward, combine backward) and back
  // (combine forward, dispatch backward) since the last call; resets both.
  std::pair<double, double> take_comm_seconds();
  // Seconds of the caller's work run while rows travelled, since the last call; resets.
  // Both counters count exchanges made with autograd on (training), not evaluation's.
  double take_overlapped_seconds();

 private:
  Dispatched exchange(const at::Tensor& rows, const at::Tensor& tokens_per_expert,
                      const std::function<void()>* overlap);
  ProcessGrid& grid_;
  int64_t num_experts_, local_experts_;
  bool overlap_;
  double to_experts_s_ = 0, from_experts_s_ = 0, overlapped_s_ = 0;
};

// Averages gradients so that every rank holds the gradient of the global batch's mean loss:
// shared (non-expert) parameters over the whole world; expert parameters summed over the data
// group (the ranks holding the same experts) and divided by the world size, because each expert
// already summed its expert group's contributions through the all-to-all. Bucketed: one
// all-reduce per group and dtype.
void synchronize_gradients(ProcessGrid& grid, const std::vector<at::Tensor>& shared_params,
                           const std::vector<at::Tensor>& expert_params);

// The global L2 norm of all gradients of the sharded model (each expert counted once) and, with
// max_norm > 0, the same clipping on every rank. Returns the norm before clipping.
double clip_grad_norm_sharded(ProcessGrid& grid, const std::vector<at::Tensor>& shared_params,
                              const std::vector<at::Tensor>& expert_params, double max_norm);

}  // namespace hetmoe
