#include "hetmoe/parallel/expert_parallel.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <chrono>
#include <cmath>
#include <map>
#include <numeric>

#include "hetmoe/core/error.h"

namespace hetmoe {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The exchange seconds are the training steps': forward passes without autograd (evaluation)
// add nothing.
bool counting() {
  return at::GradMode::is_enabled();
}
double* counted(double& seconds) {
  return counting() ? &seconds : nullptr;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct AllToAllFn : torch::autograd::Function<AllToAllFn> {
  // With `pending` (the exchange of `input` begun earlier), the forward only completes it.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, Communicator* comm,
                            std::vector<int64_t> send, std::vector<int64_t> recv,
                            double* forward_seconds, double* backward_seconds,
                            Communicator::PendingAllToAll* pending) {
    ctx->saved_data["comm"] = reinterpret_cast<int64_t>(comm);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    ctx->saved_data["bwd_s"] = reinterpret_cast<int64_t>(backward_seconds);
    const auto start = std::chrono::steady_clock::now();
    at::Tensor out = pending ? pending->wait() : comm->all_to_all(input, send, recv);
    if (forward_seconds) *forward_seconds += seconds_since(start);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    auto* seconds = reinterpret_cast<double*>(ctx->saved_data["bwd_s"].toInt());
    const auto start = std::chrono::steady_clock::now();
    // Gradient rows go back where their rows came from: the splits swap.
    at::Tensor g = comm->all_to_all(grads[0].contiguous(), ctx->saved_data["recv"].toIntVector(),
                                    ctx->saved_data["send"].toIntVector());
    if (seconds) *seconds += seconds_since(start);
    return {g, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct Plan {
  std::vector<int64_t> send, recv;
  at::Tensor ungroup;  // received order of the rows dispatch handed out in local-expert order
};

std::vector<int64_t> host_longs(const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

at::Tensor differentiable_all_to_all(Communicator& comm, const at::Tensor& input,
                                     const std::vector<int64_t>& send_splits,
                                     const std::vector<int64_t>& recv_splits,
                                     double* forward_seconds, double* backward_seconds) {
  return AllToAllFn::apply(input.contiguous(), &comm, send_splits, recv_splits, forward_seconds,
                           backward_seconds, nullptr);
}

AllToAllExchange::AllToAllExchange(ProcessGrid& grid, int64_t num_experts, bool overlap)
    : grid_(grid),
      num_experts_(num_experts),
      local_experts_(grid.expert_shard().count),
      overlap_(overlap) {}

ExpertExchange::Dispatched AllToAllExchange::dispatch(const at::Tensor& rows,
                                                      const at::Tensor& tokens_per_expert) {
  return exchange(rows, tokens_per_expert, nullptr);
}

ExpertExchange::Dispatched AllToAllExchange::dispatch_overlapped(
    const at::Tensor& rows, const at::Tensor& tokens_per_expert,
    const std::function<void()>& overlap) {
  if (!overlap_ || grid_.expert_group().size() == 1) {
    overlap();
    return exchange(rows, tokens_per_expert, nullptr);
  }
  return exchange(rows, tokens_per_expert, &overlap);
}

ExpertExchange::Dispatched AllToAllExchange::exchange(const at::Tensor& rows,
                                                      const at::Tensor& tokens_per_expert,
                                                      const std::function<void()>* overlap) {
  Communicator& ep = grid_.expert_group();
  const int p = ep.size();
  const int64_t l = local_experts_;
  HETMOE_CHECK(tokens_per_expert.numel() == num_experts_, "parallel", "dispatch got ",
               tokens_per_expert.numel(), " expert counts for ", num_experts_, " experts");
  if (p == 1) return Dispatched{rows, tokens_per_expert, nullptr};  // every expert is local
  auto start = std::chrono::steady_clock::now();
  auto plan = std::make_shared<Plan>();
  const std::vector<int64_t> counts = host_longs(tokens_per_expert);
  plan->send.assign(p, 0);
  for (int q = 0; q < p; ++q)
    for (int64_t e = 0; e < l; ++e) plan->send[q] += counts[q * l + e];
  // Counts first: row q of the result holds how many rows rank q sends to each local expert.
  const std::vector<int64_t> ones(p, 1);
  const std::vector<int64_t> from =
      host_longs(ep.all_to_all(at::tensor(counts, at::kLong).view({p, l}), ones, ones));
  plan->recv.assign(p, 0);
  for (int q = 0; q < p; ++q)
    for (int64_t e = 0; e < l; ++e) plan->recv[q] += from[q * l + e];
  // The rows: begun here, the caller's work run while they travel (not counted as dispatch
  // time), completed inside the autograd function so its backward is the reverse exchange.
  const at::Tensor send_rows = rows.contiguous();
  std::unique_ptr<Communicator::PendingAllToAll> pending;
  if (overlap) {
    pending = ep.all_to_all_start(send_rows, plan->send, plan->recv);
    if (counting()) to_experts_s_ += seconds_since(start);
    const auto work = std::chrono::steady_clock::now();
    (*overlap)();
    if (counting()) overlapped_s_ += seconds_since(work);
    start = std::chrono::steady_clock::now();
  }
  // (the forward time of the row exchange is inside this whole call's, added below)
  at::Tensor received =
      AllToAllFn::apply(send_rows, &ep, plan->send, plan->recv, /*forward_seconds=*/nullptr,
                        counted(from_experts_s_), pending.get());

  // Received rows are grouped by source rank, then by expert; the experts want them grouped by
  // expert, then by source rank (stable, so the order inside an expert is the same on any grid).
  std::vector<int64_t> source_start(p, 0);
  for (int q = 1; q < p; ++q) source_start[q] = source_start[q - 1] + plan->recv[q - 1];
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(received.size(0)));
  std::vector<int64_t> local_counts(l, 0);
  for (int64_t e = 0; e < l; ++e) {
    for (int q = 0; q < p; ++q) {
      int64_t begin = source_start[q];
      for (int64_t f = 0; f < e; ++f) begin += from[q * l + f];
      for (int64_t i = 0; i < from[q * l + e]; ++i) order.push_back(begin + i);
      local_counts[e] += from[q * l + e];
    }
  }
  at::Tensor index = at::tensor(order, at::kLong).to(rows.device());
  plan->ungroup =
      at::empty_like(index).index_copy_(0, index, at::arange(index.numel(), index.options()));
  Dispatched d;
  d.rows = received.index_select(0, index);
  d.tokens_per_expert = at::tensor(local_counts, at::kLong).to(tokens_per_expert.device());
  d.plan = plan;
  // The counts exchange and the regrouping count as dispatch time too.
  if (counting()) to_experts_s_ += seconds_since(start);
  return d;
}

at::Tensor AllToAllExchange::combine(const at::Tensor& rows, const Dispatched& dispatched) {
  if (!dispatched.plan) return rows;
  const auto& plan = *std::static_pointer_cast<Plan>(dispatched.plan);
  return differentiable_all_to_all(grid_.expert_group(), rows.index_select(0, plan.ungroup),
                                   plan.recv, plan.send, counted(from_experts_s_),
                                   counted(to_experts_s_));
}

at::Tensor AllToAllExchange::sum_over_token_ranks(const at::Tensor& t) {
  at::Tensor s = t.detach().clone();
  grid_.world().all_reduce(s, ReduceOp::Sum);
  return s;
}

std::pair<double, double> AllToAllExchange::take_comm_seconds() {
  const std::pair<double, double> s{to_experts_s_, from_experts_s_};
  to_experts_s_ = from_experts_s_ = 0;
  return s;
}

double AllToAllExchange::take_overlapped_seconds() {
  const double s = overlapped_s_;
  overlapped_s_ = 0;
  return s;
}

namespace {

// One all-reduce (sum) per dtype over `comm`, then a scale; every rank passes the same list.
void reduce_grads(Communicator& comm, const std::vector<at::Tensor>& params, double scale) {
  std::map<at::ScalarType, std::vector<at::Tensor>> by_dtype;
  for (const auto& p : params) {
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);  // same layout on every rank
    by_dtype[p.grad().scalar_type()].push_back(p.grad());
  }
  for (auto& [dtype, grads] : by_dtype) {
    std::vector<at::Tensor> flat;
    for (const auto& g : grads) flat.push_back(g.reshape(-1));
    at::Tensor bucket = at::cat(flat);
    if (comm.size() > 1) comm.all_reduce(bucket, ReduceOp::Sum);
    if (scale != 1.0) bucket.mul_(scale);
    int64_t offset = 0;
    for (auto& g : grads) {
      g.copy_(bucket.narrow(0, offset, g.numel()).view(g.sizes()));
      offset += g.numel();
    }
  }
}

double sum_of_squares(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;
  return at::stack(at::_foreach_norm(grads, 2)).to(at::kDouble).pow(2).sum().item<double>();
}

}  // namespace

void synchronize_gradients(ProcessGrid& grid, const std::vector<at::Tensor>& shared_params,
                           const std::vector<at::Tensor>& expert_params) {
  at::NoGradGuard no_grad;
  if (grid.world_size() == 1) return;
  const double inv_world = 1.0 / grid.world_size();
  reduce_grads(grid.world(), shared_params, inv_world);
  reduce_grads(grid.data_group(), expert_params, inv_world);
}

double clip_grad_norm_sharded(ProcessGrid& grid, const std::vector<at::Tensor>& shared_params,
                              const std::vector<at::Tensor>& expert_params, double max_norm) {
  at::NoGradGuard no_grad;
  at::Tensor sq = at::tensor({sum_of_squares(expert_params)}, at::kDouble);
  // Expert shards differ within an expert group and repeat across data groups.
  if (grid.expert_parallel() > 1) grid.expert_group().all_reduce(sq, ReduceOp::Sum);
  const double total = std::sqrt(sum_of_squares(shared_params) + sq.item<double>());
  if (max_norm > 0 && total > max_norm && std::isfinite(total)) {
    std::vector<at::Tensor> grads;
    for (const auto* list : {&shared_params, &expert_params})
      for (const auto& p : *list)
        if (p.grad().defined()) grads.push_back(p.grad());
    at::_foreach_mul_(grads, max_norm / (total + 1e-6));
  }
  return total;
}

}  // namespace hetmoe
