// Collective communication for data and expert parallelism: one interface, three transports.
//   local  world size 1; every operation is a real copy (no shortcuts that tests would miss)
//   mpi    CPU tensors over MPI; device tensors are staged through host memory
//   nccl   CUDA tensors over NCCL; its unique id travels over MPI
// Every blocking operation has a deadline (CommOptions::timeout_s). On timeout or failure it
// throws CommError naming the operation, the communicator, the rank and the training step; the
// caller then takes the whole job down (abort_job) instead of leaving other ranks hanging.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "hetmoe/core/error.h"

namespace hetmoe {

enum class ReduceOp { Sum, Avg, Max };

struct CommOptions {
  std::string backend = "auto";  // auto | mpi | nccl | local
  bool strict = false;           // an unavailable requested backend is an error, not a fallback
  double timeout_s = 300;        // deadline of every blocking operation
};

// A failed or timed-out collective. The message reads like
// "[comm] all_reduce on 'world' (mpi, rank 1 of 4) at step 12: timed out after 300 s".
class CommError : public Error {
 public:
  using Error::Error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "local", "mpi" or "nccl"
  const std::string& name() const { return name_; }

  // The training step named in error messages (set by the trainer each step).
  void set_step(int64_t step) { step_ = step; }
  int64_t step() const { return step_; }
  double timeout_s() const { return timeout_s_; }
  void set_timeout(double seconds) { timeout_s_ = seconds; }

  // In place over all ranks. Avg divides by size() (integers: floor).
  virtual void all_reduce(at::Tensor& t, ReduceOp op) = 0;
  // Every rank's `t` (same shape everywhere) concatenated along dim 0 in rank order.
  virtual at::Tensor all_gather(const at::Tensor& t) = 0;
  // The reduction of `t` (dim 0 divisible by size()) over ranks; rank r keeps block r of dim 0.
  virtual at::Tensor reduce_scatter(const at::Tensor& t, ReduceOp op) = 0;
  virtual void broadcast(at::Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Uneven all-to-all along dim 0: the first send_splits[0] rows of `input` go to rank 0, the
  // next send_splits[1] to rank 1, ...; returns the rows received, recv_splits[r] from rank r,
  // in rank order. Zero splits are fine. Both split lists must agree with the peers' lists.
  // `out`, when given, receives the rows (shape [sum(recv_splits), ...], input's dtype and
  // device) and is returned: a caller that exchanges every step can reuse one buffer.
  virtual at::Tensor all_to_all(const at::Tensor& input, const std::vector<int64_t>& send_splits,
                                const std::vector<int64_t>& recv_splits,
                                const at::Tensor& out = {}) = 0;
  // An all_to_all in flight. Until wait() returns, the input must stay unchanged and the result
  // unread; the caller computes something else meanwhile (the MoE layer: its shared experts).
  class PendingAllToAll {
   public:
    virtual ~PendingAllToAll() = default;
    // Completes the exchange under the communicator's deadline and returns the received rows
    // (later calls return them again, or throw the first call's error again). Call it before
    // the next collective on the same communicator.
    at::Tensor wait();

   protected:
    // The transport's completion; wait() calls it once.
    virtual at::Tensor complete() = 0;
    // For the transports' destructors: completes an exchange nobody waited for (a failure is
    // logged, not thrown), so the transport never writes into freed buffers.
    void complete_if_abandoned() noexcept;

   private:
    bool completed_ = false;
    at::Tensor rows_;
    std::exception_ptr error_;
  };
  // all_to_all begun: the same contract, the same errors, the rows valid after wait(). MPI posts
  // the sends and receives and returns; NCCL enqueues the exchange on a stream of its own so
  // kernels enqueued meanwhile on the current stream overlap it; local completes here. A pending
  // exchange destroyed without wait() is waited for (errors are then only logged).
  virtual std::unique_ptr<PendingAllToAll> all_to_all_start(const at::Tensor& input,
                                                            const std::vector<int64_t>& send_splits,
                                                            const std::vector<int64_t>& recv_splits,
                                                            const at::Tensor& out = {});
  // Collective over this communicator: ranks passing the same color form a new communicator,
  // ordered by key (then by rank here). `name` is what its errors call it.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

 protected:
  Communicator(std::string name, double timeout_s)
      : name_(std::move(name)), timeout_s_(timeout_s) {}
  // "[comm] <op> on '<name>' (<backend>, rank r of n) at step s: <what>"
  [[noreturn]] void fail(const std::string& op, const std::string& what) const;
  // Checks shared by the transports (dtype, contiguity, split sums).
  void check_splits(const char* op, const at::Tensor& input, const std::vector<int64_t>& send,
                    const std::vector<int64_t>& recv) const;
  // The all_to_all result buffer: `out` after checking it, or a new tensor.
  at::Tensor output_rows(const char* op, const at::Tensor& input, int64_t rows,
                         const at::Tensor& out) const;

 private:
  std::string name_;
  int64_t step_ = 0;
  double timeout_s_;
};

// Whether this process was started by a parallel launcher (mpirun, srun): the environment holds
// a world size.
bool launched_by_mpi();
// The launcher's world size and rank from the environment (1 and 0 when not launched).
int launcher_world_size();
int launcher_rank();
// How many of the launcher's ranks run on this node (OMPI_COMM_WORLD_LOCAL_SIZE, MPICH's
// MPI_LOCALNRANKS, LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE); 1 when not launched or not told.
int launcher_local_size();
// This process's rank among those on its node (for choosing a GPU); 0 when not launched.
int launcher_local_rank();

// The world communicator for `device_type` tensors. backend "auto": NCCL for CUDA devices when
// built and launched, else MPI when built and launched, else local. A named backend that is not
// built (or MPI/NCCL without a launcher) falls back to auto's choice with a warning, or throws
// with options.strict.
std::unique_ptr<Communicator> make_world_communicator(const CommOptions& options,
                                                      c10::DeviceType device_type);

// What `hetmoe version` and `hetmoe devices` print: transports built in and their versions.
std::string comm_transports();

// Ends every rank of the job with `exit_code` (MPI_Abort when MPI is initialised and the world
// has other ranks; otherwise returns and the caller exits).
void abort_job(int exit_code);

}  // namespace hetmoe
