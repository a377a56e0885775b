// The communicator base, the local (world size 1) transport, and the transport choice.
#include "hetmoe/comm/communicator.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <numeric>
#include <string>

#include "comm/transports.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"

namespace hetmoe {

void Communicator::fail(const std::string& op, const std::string& what) const {
  throw CommError("comm", detail::concat(op, " on '", name_, "' (", backend(), ", rank ", rank(),
                                         " of ", size(), ") at step ", step_, ": ", what));
}

void Communicator::check_splits(const char* op, const at::Tensor& input,
                                const std::vector<int64_t>& send,
                                const std::vector<int64_t>& recv) const {
  const auto n = static_cast<size_t>(size());
  if (send.size() != n || recv.size() != n)
    fail(op, detail::concat("needs one send and one receive split per rank (", n, "), got ",
                            send.size(), " and ", recv.size()));
  if (input.dim() < 1) fail(op, "input must have a row dimension");
  for (size_t r = 0; r < n; ++r)
    if (send[r] < 0 || recv[r] < 0) fail(op, detail::concat("negative split for rank ", r));
  const int64_t total = std::accumulate(send.begin(), send.end(), int64_t{0});
  if (total != input.size(0))
    fail(op,
         detail::concat("send splits sum to ", total, " rows but the input has ", input.size(0)));
  const auto self = static_cast<size_t>(rank());
  if (send[self] != recv[self])
    fail(op, detail::concat("sends ", send[self], " rows to itself but expects ", recv[self]));
}

at::Tensor Communicator::output_rows(const char* op, const at::Tensor& input, int64_t rows,
                                     const at::Tensor& out) const {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape[0] = rows;
  if (!out.defined()) return at::empty(shape, input.options());
  if (out.sizes() != at::IntArrayRef(shape) || out.scalar_type() != input.scalar_type() ||
      out.device() != input.device() || !out.is_contiguous())
    fail(op, detail::concat("output buffer ", out.sizes(), " ", out.scalar_type(), " on ",
                            out.device(), " does not fit ", at::IntArrayRef(shape), " ",
                            input.scalar_type(), " on ", input.device()));
  return out;
}

at::Tensor Communicator::PendingAllToAll::wait() {
  if (!completed_) {
    completed_ = true;  // a failed completion is not attempted again
    try {
      rows_ = complete();
    } catch (...) {
      error_ = std::current_exception();
    }
  }
  if (error_) std::rethrow_exception(error_);
  return rows_;
}

void Communicator::PendingAllToAll::complete_if_abandoned() noexcept {
  if (completed_) return;
  try {
    wait();
  } catch (const std::exception& e) {
    HETMOE_LOG_WARN("abandoned all_to_all: %s", e.what());
  }
}

namespace {

// A pending exchange that completed when it began.
class CompletedAllToAll final : public Communicator::PendingAllToAll {
 public:
  explicit CompletedAllToAll(at::Tensor rows) : rows_(std::move(rows)) {}

 protected:
  at::Tensor complete() override { return rows_; }

 private:
  at::Tensor rows_;
};

}  // namespace

std::unique_ptr<Communicator::PendingAllToAll> Communicator::all_to_all_start(
    const at::Tensor& input, const std::vector<int64_t>& send_splits,
    const std::vector<int64_t>& recv_splits, const at::Tensor& out) {
  return std::make_unique<CompletedAllToAll>(all_to_all(input, send_splits, recv_splits, out));
}

namespace {

// The first of `names` set to a non-empty value, or nullptr.
const char* first_set(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (const char* v = std::getenv(n); v && *v) return n;
  return nullptr;
}

int env_int(std::initializer_list<const char*> names, int fallback) {
  const char* n = first_set(names);
  return n ? std::atoi(std::getenv(n)) : fallback;
}

// World size 1. Every operation still validates its arguments and returns fresh memory, so code
// that is wrong for N ranks fails here too where it can.
class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::string name, double timeout_s)
      : Communicator(std::move(name), timeout_s) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  void all_reduce(at::Tensor& t, ReduceOp) override { (void)t; }
  at::Tensor all_gather(const at::Tensor& t) override { return t.clone(); }
  at::Tensor reduce_scatter(const at::Tensor& t, ReduceOp) override { return t.clone(); }
  void broadcast(at::Tensor&, int root) override {
    if (root != 0) fail("broadcast", detail::concat("root ", root, " outside [0, 1)"));
  }
  void barrier() override {}
  at::Tensor all_to_all(const at::Tensor& input, const std::vector<int64_t>& send,
                        const std::vector<int64_t>& recv, const at::Tensor& out) override {
    check_splits("all_to_all", input, send, recv);
    at::Tensor o = output_rows("all_to_all", input, recv[0], out);
    o.copy_(input);
    return o;
  }
  std::unique_ptr<Communicator> split(int, int, const std::string& name) override {
    return std::make_unique<LocalCommunicator>(name, timeout_s());
  }
};

}  // namespace

namespace comm_detail {
std::unique_ptr<Communicator> make_local(const std::string& name, double timeout_s) {
  return std::make_unique<LocalCommunicator>(name, timeout_s);
}
}  // namespace comm_detail

bool launched_by_mpi() {
  return launcher_world_size() > 1;
}

constexpr std::initializer_list<const char*> kWorldSizeVars = {
    "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS", "MPI_WORLD_SIZE"};

int launcher_world_size() {
  return env_int(kWorldSizeVars, 1);
}

int launcher_rank() {
  return env_int({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}, 0);
}

int launcher_local_size() {
  if (!launched_by_mpi()) return 1;
  return std::max(1, env_int({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "LOCAL_WORLD_SIZE",
                              "SLURM_NTASKS_PER_NODE"},
                             1));
}

int launcher_local_rank() {
  return env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"},
                 0);
}

namespace comm_detail {

std::optional<std::pair<int, int>> first_shared_gpu(const std::vector<std::string>& gpus) {
  std::map<std::string, int> first_rank;
  for (int r = 0; r < static_cast<int>(gpus.size()); ++r) {
    auto [it, fresh] = first_rank.emplace(gpus[r], r);
    if (!fresh) return std::make_pair(it->second, r);
  }
  return std::nullopt;
}

}  // namespace comm_detail

namespace {

// The variable launcher_world_size() read.
std::string world_size_var() {
  const char* n = first_set(kWorldSizeVars);
  return n ? n : "";
}

std::unique_ptr<Communicator> make_world_unchecked(const CommOptions& options,
                                                   c10::DeviceType device_type);

}  // namespace

std::unique_ptr<Communicator> make_world_communicator(const CommOptions& options,
                                                      c10::DeviceType device_type) {
  std::unique_ptr<Communicator> world = make_world_unchecked(options, device_type);
  const int expected = launcher_world_size();
  if (world->size() == expected) return world;
  // The launcher's environment and MPI disagree: MPI did not wire this process to its peers (srun
  // with an MPI lacking Slurm's PMI, another MPI's launcher), so each would train alone in the
  // same run directory. The one exception: SLURM_NTASKS is also set inside a batch script,
  // where a single `hetmoe train` (task 0, no srun) is a legitimate one-process run.
  const std::string var = world_size_var();
  const char* task = std::getenv("SLURM_PROCID");  // MPI's singleton start may set OMPI_* ones
  if (var == "SLURM_NTASKS" && world->size() == 1 && (!task || std::atoi(task) == 0)) {
    HETMOE_LOG_WARN(
        "[comm] SLURM_NTASKS is %d but MPI started this process alone: training as one process "
        "(start it with srun or mpirun to use the %d tasks)",
        expected, expected);
    return world;
  }
  HETMOE_FAIL("comm", "the launcher's environment says ", expected, " ranks (", var,
              ") but MPI_COMM_WORLD has ", world->size(),
              ": this process was not started by that launcher's MPI (with srun, the MPI must "
              "support Slurm's PMI; else use mpirun)");
}

namespace {

std::unique_ptr<Communicator> make_world_unchecked(const CommOptions& options,
                                                   c10::DeviceType device_type) {
  using namespace comm_detail;
  HETMOE_CHECK(options.timeout_s > 0, "comm", "comm.timeout_s must be > 0, got ",
               options.timeout_s);
  const bool launched = launched_by_mpi();
  const bool gpu = device_type == c10::DeviceType::CUDA;
  const bool nccl_possible = launched && gpu && nccl_built() && mpi_built();
  // NCCL when it can carry this job, MPI otherwise (`nccl_refused`: why NCCL cannot).
  auto automatic = [&](std::string nccl_refused) -> std::unique_ptr<Communicator> {
    if (nccl_possible && nccl_refused.empty()) {
      if (auto c = make_nccl_world(options.timeout_s, &nccl_refused)) return c;
      HETMOE_LOG_WARN(
          "[comm] not using NCCL: %s; using mpi (GPU tensors staged through host "
          "memory)",
          nccl_refused.c_str());
    }
    if (launched && mpi_built()) return make_mpi_world(options.timeout_s);
    HETMOE_CHECK(!launched, "comm", "started by a parallel launcher with ", launcher_world_size(),
                 " ranks, but this hetmoe was built without MPI (HETMOE_WITH_MPI)");
    return make_local("world", options.timeout_s);
  };
  const std::string& b = options.backend;
  std::string unavailable;
  if (b == "auto") return automatic("");
  if (b == "local") {
    HETMOE_CHECK(!launched, "comm", "comm.backend is local (one process) but the launcher started ",
                 launcher_world_size(), " ranks");
    return make_local("world", options.timeout_s);
  }
  if (b == "mpi") {
    if (mpi_built()) return make_mpi_world(options.timeout_s);
    unavailable = "MPI is not built in (configure with HETMOE_WITH_MPI=ON and libopenmpi-dev)";
  } else if (b == "nccl") {
    if (!nccl_built())
      unavailable = "NCCL is not built in (a CUDA build with HETMOE_WITH_NCCL=ON)";
    else if (!gpu)
      unavailable = "NCCL carries CUDA tensors only and backend.device is not cuda";
    else if (!mpi_built())
      unavailable = "NCCL bootstraps over MPI, which is not built in";
    else if (auto c = make_nccl_world(options.timeout_s, &unavailable))
      return c;
  } else {
    HETMOE_FAIL("comm", "comm.backend '", b, "' is not one of auto, mpi, nccl, local");
  }
  HETMOE_CHECK(!options.strict, "comm", "comm.backend is ", b, " but ", unavailable,
               " (comm.strict is on)");
  auto chosen = automatic(b == "nccl" ? unavailable : "");
  HETMOE_LOG_WARN("[comm] comm.backend %s unavailable: %s; using %s", b.c_str(),
                  unavailable.c_str(), chosen->backend().c_str());
  return chosen;
}

}  // namespace

std::string comm_transports() {
  using namespace comm_detail;
  std::string s = "local";
  s += mpi_built() ? ", mpi (" + mpi_version() + ")" : ", mpi (not built)";
  s += nccl_built() ? ", nccl (" + nccl_version() + ")" : ", nccl (not built)";
  return s;
}

void abort_job(int exit_code) {
  if (comm_detail::mpi_active()) comm_detail::mpi_abort(exit_code);
}

}  // namespace hetmoe
