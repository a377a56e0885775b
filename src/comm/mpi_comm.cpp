// The MPI transport. Every collective is the non-blocking MPI call plus a wait that polls
// MPI_Test against the communicator's deadline, which is what lets a missing peer surface as a
// named CommError instead of a hang. Device tensors are staged through host memory.
#include <ATen/ATen.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <thread>

#include "comm/transports.h"

namespace hetmoe {
namespace {

bool mpi_initialized() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

void finalize_at_exit() {
  if (mpi_initialized()) MPI_Finalize();
}

void ensure_mpi() {
  int init = 0;
  MPI_Initialized(&init);
  if (init) return;
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    HETMOE_FAIL("comm", "MPI_Init_thread failed");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit(finalize_at_exit);
}

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, static_cast<size_t>(len));
}

// The MPI type of one element for moving data; reductions of 16-bit floats go through fp32.
MPI_Datatype element_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kLong:
      return MPI_INT64_T;
    case at::kInt:
      return MPI_INT32_T;
    case at::kShort:
      return MPI_INT16_T;
    case at::kBFloat16:
    case at::kHalf:
      return MPI_UINT16_T;
    case at::kByte:
    case at::kBool:
      return MPI_UINT8_T;
    case at::kChar:
      return MPI_INT8_T;
    default:
      return MPI_DATATYPE_NULL;
  }
}

constexpr int kAllToAllTag = 0x4d6f45;  // "MoE"

// Buffers of requests that failed or timed out. MPI may still read or write them (a late peer),
// so they are kept until the process ends, which after a communication error is soon
// (abort_job).
void quarantine(std::initializer_list<at::Tensor> buffers) {
  static std::mutex mutex;
  static std::vector<at::Tensor>* kept = new std::vector<at::Tensor>();  // never destroyed
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& b : buffers) kept->push_back(b);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s, bool owned)
      : Communicator(std::move(name), timeout_s), comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  ~MpiCommunicator() override {
    // A communicator left with a request in flight (after a timeout) is not freed: freeing it
    // would block, and the job is about to be aborted anyway.
    if (owned_ && broken_.empty() && mpi_initialized()) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(at::Tensor& t, ReduceOp op) override {
    const char* name = "all_reduce";
    usable(name);
    at::Tensor host = staged(name, t, /*reduce=*/true);
    MPI_Request req;
    check(name, MPI_Iallreduce(MPI_IN_PLACE, host.data_ptr(), count(name, host.numel()),
                               element_type(host.scalar_type()),
                               op == ReduceOp::Max ? MPI_MAX : MPI_SUM, comm_, &req));
    wait(name, req);
    if (op == ReduceOp::Avg) divide(host);
    if (!host.is_same(t)) t.copy_(host);
  }

  at::Tensor all_gather(const at::Tensor& t) override {
    const char* name = "all_gather";
    usable(name);
    at::Tensor host = staged(name, t, false);
    std::vector<int64_t> shape(host.sizes().begin(), host.sizes().end());
    if (shape.empty()) shape.push_back(1);
    shape[0] *= size_;
    at::Tensor out = at::empty(shape, host.options());
    MPI_Request req;
    const int n = count(name, host.numel());
    const MPI_Datatype type = element_type(host.scalar_type());
    check(name, MPI_Iallgather(host.data_ptr(), n, type, out.data_ptr(), n, type, comm_, &req));
    wait(name, req);
    return out.to(t.device());
  }

  at::Tensor reduce_scatter(const at::Tensor& t, ReduceOp op) override {
    const char* name = "reduce_scatter";
    usable(name);
    if (t.dim() < 1 || t.size(0) % size_ != 0)
      fail(name, detail::concat("dim 0 of ", t.sizes(), " is not divisible by ", size_, " ranks"));
    at::Tensor host = staged(name, t, true);
    std::vector<int64_t> shape(host.sizes().begin(), host.sizes().end());
    shape[0] /= size_;
    at::Tensor out = at::empty(shape, host.options());
    MPI_Request req;
    check(name, MPI_Ireduce_scatter_block(host.data_ptr(), out.data_ptr(), count(name, out.numel()),
                                          element_type(host.scalar_type()),
                                          op == ReduceOp::Max ? MPI_MAX : MPI_SUM, comm_, &req));
    wait(name, req);
    if (op == ReduceOp::Avg) divide(out);
    return out.to(t.scalar_type()).to(t.device());
  }

  void broadcast(at::Tensor& t, int root) override {
    const char* name = "broadcast";
    usable(name);
    if (root < 0 || root >= size_)
      fail(name, detail::concat("root ", root, " outside [0, ", size_, ")"));
    at::Tensor host = staged(name, t, false);
    MPI_Request req;
    check(name, MPI_Ibcast(host.data_ptr(), count(name, host.numel()),
                           element_type(host.scalar_type()), root, comm_, &req));
    wait(name, req);
    if (!host.is_same(t)) t.copy_(host);
  }

  void barrier() override {
    usable("barrier");
    MPI_Request req;
    check("barrier", MPI_Ibarrier(comm_, &req));
    wait("barrier", req);
  }

  at::Tensor all_to_all(const at::Tensor& input, const std::vector<int64_t>& send,
                        const std::vector<int64_t>& recv, const at::Tensor& given) override {
    return all_to_all_start(input, send, recv, given)->wait();
  }

  // The rows of an all_to_all in flight, its requests and the buffers MPI reads and writes.
  class Pending final : public PendingAllToAll {
   public:
    Pending(MpiCommunicator* comm, std::vector<MPI_Request> reqs, at::Tensor src, at::Tensor out,
            at::Tensor result)
        : comm_(comm),
          reqs_(std::move(reqs)),
          src_(std::move(src)),
          out_(std::move(out)),
          result_(std::move(result)) {}
    ~Pending() override { complete_if_abandoned(); }

   protected:
    at::Tensor complete() override {
      try {
        comm_->wait_all("all_to_all", std::move(reqs_));
      } catch (...) {
        quarantine({src_, out_});  // a late peer may still deliver into them
        throw;
      }
      if (!out_.is_same(result_)) result_.copy_(out_);  // device tensors: from the host buffer
      return result_;
    }

   private:
    MpiCommunicator* comm_;
    std::vector<MPI_Request> reqs_;
    at::Tensor src_, out_, result_;
  };

  std::unique_ptr<PendingAllToAll> all_to_all_start(const at::Tensor& input,
                                                    const std::vector<int64_t>& send,
                                                    const std::vector<int64_t>& recv,
                                                    const at::Tensor& given) override {
    const char* name = "all_to_all";
    usable(name);
    check_splits(name, input, send, recv);
    at::Tensor host = staged(name, input, false);
    // Elements per row from the shape, not numel / rows: a rank may send no rows at all.
    int64_t row_elems = 1;
    for (int64_t d = 1; d < host.dim(); ++d) row_elems *= host.size(d);
    const int64_t total = std::accumulate(recv.begin(), recv.end(), int64_t{0});
    at::Tensor result = output_rows(name, input, total, given);
    // Device tensors land in host memory first.
    at::Tensor out = result.is_cpu() ? result : output_rows(name, host, total, {});
    // Point-to-point with each peer that has rows to exchange, and a local copy for this rank's
    // own block; the requests complete together under the one deadline. Messages of successive
    // calls cannot cross: MPI keeps the order per (peer, tag, communicator), and every exchange
    // is waited for before the next collective begins.
    const int64_t row_bytes = row_elems * static_cast<int64_t>(host.element_size());
    const auto* src = static_cast<const char*>(host.data_ptr());
    auto* dst = static_cast<char*>(out.data_ptr());
    std::vector<MPI_Request> reqs;
    reqs.reserve(2 * static_cast<size_t>(size_));
    // Offsets and MPI counts first: nothing is posted unless every count fits.
    int64_t so = 0, ro = 0;
    std::vector<int64_t> send_off(size_), recv_off(size_);
    std::vector<int> send_count(size_), recv_count(size_);
    for (int r = 0; r < size_; ++r) {
      send_off[r] = so;
      recv_off[r] = ro;
      send_count[r] = count(name, send[r] * row_bytes);
      recv_count[r] = count(name, recv[r] * row_bytes);
      so += send[r] * row_bytes;
      ro += recv[r] * row_bytes;
    }
    try {
      for (int r = 0; r < size_; ++r) {
        if (r == rank_ || recv[r] == 0) continue;
        reqs.emplace_back();
        check(name, MPI_Irecv(dst + recv_off[r], recv_count[r], MPI_BYTE, r, kAllToAllTag, comm_,
                              &reqs.back()));
      }
      for (int k = 1; k <= size_; ++k) {  // staggered: rank r sends to r+1 first
        const int r = (rank_ + k) % size_;
        if (r == rank_ || send[r] == 0) continue;
        reqs.emplace_back();
        check(name, MPI_Isend(src + send_off[r], send_count[r], MPI_BYTE, r, kAllToAllTag, comm_,
                              &reqs.back()));
      }
      // This rank's own rows, copied in slices with MPI progress in between: shared-memory
      // transfers move only while both sides drive them.
      const int64_t self_bytes = send[rank_] * row_bytes;
      constexpr int64_t kSlice = 256 << 10;
      for (int64_t off = 0; off < self_bytes; off += kSlice) {
        std::memcpy(dst + recv_off[rank_] + off, src + send_off[rank_] + off,
                    static_cast<size_t>(std::min(kSlice, self_bytes - off)));
        int flag = 0;
        if (!reqs.empty())
          check(name, MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &flag,
                                  MPI_STATUSES_IGNORE));
      }
    } catch (...) {
      quarantine({host, out});  // posted requests may still use them
      throw;
    }
    return std::make_unique<Pending>(this, std::move(reqs), host, out, result);
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    // MPI_Comm_split has no non-blocking form: a timed barrier first turns a missing rank into
    // a named error rather than a hang inside the split.
    barrier();
    MPI_Comm sub;
    check("split", MPI_Comm_split(comm_, color, key, &sub));
    return std::make_unique<MpiCommunicator>(sub, name, timeout_s(), true);
  }

 private:
  void usable(const char* op) const {
    if (!broken_.empty()) fail(op, "communicator unusable after an earlier failure in " + broken_);
  }

  void check(const char* op, int code) {
    if (code != MPI_SUCCESS) {
      broken_ = op;
      fail(op, mpi_error_string(code));
    }
  }

  int count(const char* op, int64_t n) const {
    if (n < 0 || n > INT_MAX) fail(op, detail::concat("count ", n, " exceeds MPI's int range"));
    return static_cast<int>(n);
  }

  // A contiguous host tensor MPI can work on; 16-bit floats become fp32 for reductions.
  at::Tensor staged(const char* op, const at::Tensor& t, bool reduce) const {
    if (element_type(t.scalar_type()) == MPI_DATATYPE_NULL)
      fail(op, detail::concat("unsupported dtype ", t.scalar_type()));
    at::Tensor h = t;
    if (reduce && (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf))
      h = h.to(at::kFloat);
    if (reduce && t.scalar_type() == at::kBool) fail(op, "cannot reduce bool tensors");
    if (h.is_cpu() && h.is_contiguous()) return h;  // the common case, without a dispatch
    return h.to(at::kCPU).contiguous();
  }

  void divide(at::Tensor& t) const {
    if (at::isFloatingType(t.scalar_type()))
      t.div_(size_);
    else
      t.floor_divide_(size_);
  }

  // Polls the request until it completes or the deadline passes. Spins briefly (latency), then
  // yields the core (ranks may share cores), then sleeps in short naps.
  void wait(const char* op, MPI_Request& req) { wait_all(op, std::vector<MPI_Request>{req}); }

  void wait_all(const char* op, std::vector<MPI_Request> reqs) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto deadline = start + std::chrono::duration_cast<clock::duration>(
                                      std::chrono::duration<double>(timeout_s()));
    for (uint64_t polls = 0;; ++polls) {
      int done = 0;
      const int code = reqs.empty() ? MPI_SUCCESS
                                    : MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done,
                                                  MPI_STATUSES_IGNORE);
      if (reqs.empty()) done = 1;
      if (code != MPI_SUCCESS) {
        broken_ = op;
        fail(op, mpi_error_string(code));
      }
      if (done) return;
      if ((polls & 255) == 0) {
        const auto now = clock::now();
        if (now > deadline) {
          broken_ = op;
          fail(op, detail::concat("timed out after ", timeout_s(),
                                  " s waiting for the other ranks (comm.timeout_s); a rank "
                                  "crashed, hangs, or skipped this call"));
        }
        if (now - start > std::chrono::milliseconds(200))
          std::this_thread::sleep_for(std::chrono::microseconds(50));
        else if (now - start > std::chrono::milliseconds(2))
          std::this_thread::yield();
      }
    }
  }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::string broken_;  // the operation that failed, if one did
};

}  // namespace

namespace comm_detail {

bool mpi_built() {
  return true;
}

std::string mpi_version() {
  char buf[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(buf, &len);
  std::string v(buf, static_cast<size_t>(len));
  if (auto nl = v.find_first_of(",\n"); nl != std::string::npos) v = v.substr(0, nl);
  return v;
}

std::unique_ptr<Communicator> make_mpi_world(double timeout_s) {
  ensure_mpi();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", timeout_s, false);
}

bool mpi_active() {
  return mpi_initialized();
}

void mpi_abort(int exit_code) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace comm_detail
}  // namespace hetmoe
