// The NCCL transport for CUDA tensors. Rank 0's ncclUniqueId is broadcast over MPI; operations
// run on LibTorch's current CUDA stream, and the wait polls a CUDA event and NCCL's async error
// against the communicator's deadline, aborting the NCCL communicator on timeout so no kernel is
// left spinning. Host tensors are staged through the device. all_to_all_start runs the exchange
// on a stream of the communicator's own, so the caller's kernels overlap it.
// Creating a communicator (ncclCommInitRank, ncclCommSplit) blocks until every rank joins and has
// no deadline of its own, so a timed barrier comes first: a rank that never arrives becomes the
// named timeout error on the others, as with MPI's split.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <thread>

#include "comm/transports.h"

namespace hetmoe {
namespace {

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kLong:
      return ncclInt64;
    case at::kInt:
      return ncclInt32;
    case at::kByte:
    case at::kBool:
      return ncclUint8;
    case at::kChar:
      return ncclInt8;
    default:
      return ncclNumTypes;
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, std::string name, double timeout_s)
      : Communicator(std::move(name), timeout_s), comm_(comm) {
    ncclCommUserRank(comm_, &rank_);
    ncclCommCount(comm_, &size_);
  }
  ~NcclCommunicator() override {
    if (comm_ && broken_.empty()) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  void all_reduce(at::Tensor& t, ReduceOp op) override {
    const char* name = "all_reduce";
    at::Tensor d = staged(name, t);
    check(name, ncclAllReduce(d.data_ptr(), d.data_ptr(), d.numel(), nccl_type(d.scalar_type()),
                              reduction(op, d), comm_, stream()));
    wait(name);
    if (op == ReduceOp::Avg && !at::isFloatingType(d.scalar_type())) d.floor_divide_(size_);
    if (!d.is_same(t)) t.copy_(d);
  }

  at::Tensor all_gather(const at::Tensor& t) override {
    const char* name = "all_gather";
    at::Tensor d = staged(name, t);
    std::vector<int64_t> shape(d.sizes().begin(), d.sizes().end());
    if (shape.empty()) shape.push_back(1);
    shape[0] *= size_;
    at::Tensor out = at::empty(shape, d.options());
    check(name, ncclAllGather(d.data_ptr(), out.data_ptr(), d.numel(), nccl_type(d.scalar_type()),
                              comm_, stream()));
    wait(name);
    return out.to(t.device());
  }

  at::Tensor reduce_scatter(const at::Tensor& t, ReduceOp op) override {
    const char* name = "reduce_scatter";
    if (t.dim() < 1 || t.size(0) % size_ != 0)
      fail(name, detail::concat("dim 0 of ", t.sizes(), " is not divisible by ", size_, " ranks"));
    at::Tensor d = staged(name, t);
    std::vector<int64_t> shape(d.sizes().begin(), d.sizes().end());
    shape[0] /= size_;
    at::Tensor out = at::empty(shape, d.options());
    check(name, ncclReduceScatter(d.data_ptr(), out.data_ptr(), out.numel(),
                                  nccl_type(d.scalar_type()), reduction(op, d), comm_, stream()));
    wait(name);
    if (op == ReduceOp::Avg && !at::isFloatingType(d.scalar_type())) out.floor_divide_(size_);
    return out.to(t.device());
  }

  void broadcast(at::Tensor& t, int root) override {
    const char* name = "broadcast";
    if (root < 0 || root >= size_)
      fail(name, detail::concat("root ", root, " outside [0, ", size_, ")"));
    at::Tensor d = staged(name, t);
    check(name, ncclBroadcast(d.data_ptr(), d.data_ptr(), d.numel(), nccl_type(d.scalar_type()),
                              root, comm_, stream()));
    wait(name);
    if (!d.is_same(t)) t.copy_(d);
  }

  void barrier() override { arrive("barrier"); }

  // An all_to_all enqueued: the staged input, the device buffer the rows arrive in, and the
  // result (that buffer, or a host tensor finish() copies them to).
  struct Exchange {
    at::Tensor input, out, result;
    at::Tensor finish() {
      if (!out.is_same(result)) result.copy_(out);
      return result;
    }
  };

  at::Tensor all_to_all(const at::Tensor& input, const std::vector<int64_t>& send,
                        const std::vector<int64_t>& recv, const at::Tensor& given) override {
    Exchange e = prepare_all_to_all(input, send, recv, given);
    enqueue_rows("all_to_all", e, send, recv, stream());
    wait("all_to_all");
    return e.finish();
  }

  // An exchange running on the communicator's own stream. Kernels the caller enqueues on the
  // current stream meanwhile run beside it; wait() polls it against the deadline, so the host
  // (and whatever it enqueues next) comes after it.
  class Pending final : public PendingAllToAll {
   public:
    Pending(NcclCommunicator* comm, Exchange e) : comm_(comm), e_(std::move(e)) {}
    ~Pending() override { complete_if_abandoned(); }

   protected:
    at::Tensor complete() override {
      comm_->wait("all_to_all", comm_->side_stream());
      return e_.finish();
    }

   private:
    NcclCommunicator* comm_;
    Exchange e_;  // its tensors stay alive while the side stream uses them
  };

  std::unique_ptr<PendingAllToAll> all_to_all_start(const at::Tensor& input,
                                                    const std::vector<int64_t>& send,
                                                    const std::vector<int64_t>& recv,
                                                    const at::Tensor& given) override {
    Exchange e = prepare_all_to_all(input, send, recv, given);
    // The side stream starts once the current stream has produced (and staged) the input.
    const cudaStream_t side = side_stream();
    cudaEvent_t ready;
    cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
    cudaEventRecord(ready, stream());
    cudaStreamWaitEvent(side, ready, 0);
    cudaEventDestroy(ready);
    enqueue_rows("all_to_all", e, send, recv, side);
    return std::make_unique<Pending>(this, std::move(e));
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    // ncclCommSplit waits for every rank without a deadline: meet them first under one.
    arrive("split");
    ncclComm_t sub = nullptr;
    check("split", ncclCommSplit(comm_, color, key, &sub, nullptr));
    return std::make_unique<NcclCommunicator>(sub, name, timeout_s());
  }

 private:
  c10::Device device() const { return c10::Device(c10::kCUDA, c10::cuda::current_device()); }
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream().stream(); }
  // The stream all_to_all_start runs exchanges on (one per communicator, from LibTorch's pool).
  cudaStream_t side_stream() {
    if (!side_) side_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true);
    return side_->stream();
  }

  // Checks the splits, stages the input on the device and allocates the buffers.
  Exchange prepare_all_to_all(const at::Tensor& input, const std::vector<int64_t>& send,
                              const std::vector<int64_t>& recv, const at::Tensor& given) {
    const char* name = "all_to_all";
    check_splits(name, input, send, recv);
    Exchange e;
    e.input = staged(name, input);
    const int64_t total = std::accumulate(recv.begin(), recv.end(), int64_t{0});
    e.result = output_rows(name, input, total, given);
    e.out = e.result.is_cuda() ? e.result : output_rows(name, e.input, total, {});
    return e;
  }

  // Grouped point-to-point on `on`: zero-row peers simply post nothing.
  void enqueue_rows(const char* name, const Exchange& e, const std::vector<int64_t>& send,
                    const std::vector<int64_t>& recv, cudaStream_t on) {
    const at::Tensor& d = e.input;
    // Elements per row from the shape, not numel / rows: a rank may send no rows at all.
    int64_t row_elems = 1;
    for (int64_t i = 1; i < d.dim(); ++i) row_elems *= d.size(i);
    const size_t row_bytes = static_cast<size_t>(row_elems) * d.element_size();
    auto* src = static_cast<char*>(d.data_ptr());
    auto* dst = static_cast<char*>(e.out.data_ptr());
    check(name, ncclGroupStart());
    size_t so = 0, ro = 0;
    for (int r = 0; r < size_; ++r) {
      if (send[r] > 0)
        check(name, ncclSend(src + so, send[r] * row_bytes, ncclUint8, r, comm_, on));
      if (recv[r] > 0)
        check(name, ncclRecv(dst + ro, recv[r] * row_bytes, ncclUint8, r, comm_, on));
      so += send[r] * row_bytes;
      ro += recv[r] * row_bytes;
    }
    check(name, ncclGroupEnd());
  }

  // A barrier under `op`'s name: a one-element all_reduce, waited for against the deadline.
  void arrive(const char* op) {
    at::Tensor one = staged(op, at::ones({1}, at::kFloat));
    check(op,
          ncclAllReduce(one.data_ptr(), one.data_ptr(), 1, ncclFloat32, ncclSum, comm_, stream()));
    wait(op);
  }

  ncclRedOp_t reduction(ReduceOp op, const at::Tensor& t) const {
    if (op == ReduceOp::Max) return ncclMax;
    return op == ReduceOp::Avg && at::isFloatingType(t.scalar_type()) ? ncclAvg : ncclSum;
  }

  at::Tensor staged(const char* op, const at::Tensor& t) const {
    if (!broken_.empty()) fail(op, "communicator unusable after an earlier failure in " + broken_);
    if (nccl_type(t.scalar_type()) == ncclNumTypes)
      fail(op, detail::concat("unsupported dtype ", t.scalar_type()));
    return t.to(device()).contiguous();
  }

  void check(const char* op, ncclResult_t r) {
    if (r != ncclSuccess && r != ncclInProgress) {
      broken_ = op;
      fail(op, std::string("NCCL error: ") + ncclGetErrorString(r) + " (" +
                   ncclGetLastError(comm_) + ")");
    }
  }

  // Waits for the operation just enqueued on `on` (default: the current stream), polling
  // against the deadline.
  void wait(const char* op, cudaStream_t on = nullptr) {
    // After an abort the NCCL communicator is gone (a pending exchange can still call this).
    if (!broken_.empty()) fail(op, "communicator unusable after an earlier failure in " + broken_);
    cudaEvent_t done;
    cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    cudaEventRecord(done, on ? on : stream());
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                             std::chrono::duration<double>(timeout_s()));
    for (;;) {
      const cudaError_t q = cudaEventQuery(done);
      if (q == cudaSuccess) break;
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (q != cudaErrorNotReady || (async != ncclSuccess && async != ncclInProgress)) {
        cudaEventDestroy(done);
        broken_ = op;
        ncclCommAbort(comm_);
        fail(op, std::string("failed: ") +
                     (q != cudaErrorNotReady ? cudaGetErrorString(q) : ncclGetErrorString(async)));
      }
      if (clock::now() > deadline) {
        cudaEventDestroy(done);
        broken_ = op;
        ncclCommAbort(comm_);  // frees the GPU from the kernel waiting for the missing peer
        fail(op, detail::concat("timed out after ", timeout_s(),
                                " s waiting for the other ranks (comm.timeout_s)"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    cudaEventDestroy(done);
  }

  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
  std::string broken_;
  std::optional<c10::cuda::CUDAStream> side_;
};

}  // namespace

namespace comm_detail {

bool nccl_built() {
  return true;
}

std::string nccl_version() {
  int v = 0;
  ncclGetVersion(&v);
  return "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

namespace {

// This process's GPU: its UUID, unique across machines and the same whatever
// CUDA_VISIBLE_DEVICES renumbers (host name and PCI bus id are not: identical nodes, or
// containers, repeat them). The host and device index where the UUID cannot be read.
std::string this_gpu() {
  int device = 0;
  cudaGetDevice(&device);
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
    std::string id = "GPU-";
    char hex[3];
    for (const char b : prop.uuid.bytes) {
      std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned char>(b));
      id += hex;
    }
    return id;
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string(host) + " cuda:" + std::to_string(device);
}

}  // namespace

std::unique_ptr<Communicator> make_nccl_world(double timeout_s, std::string* refused) {
  // MPI carries the unique id and tells each process its rank.
  std::unique_ptr<Communicator> mpi = make_mpi_world(timeout_s);
  // Every rank learns every rank's GPU, so all of them decide alike.
  constexpr int64_t kIdBytes = 320;
  const std::string gpu = this_gpu();
  at::Tensor mine = at::zeros({kIdBytes}, at::kByte);
  std::memcpy(mine.data_ptr(), gpu.data(), std::min<size_t>(gpu.size(), kIdBytes - 1));
  const at::Tensor all = mpi->all_gather(mine);
  std::vector<std::string> gpus;
  for (int r = 0; r < mpi->size(); ++r)
    gpus.emplace_back(reinterpret_cast<const char*>(all.data_ptr<uint8_t>() + r * kIdBytes));
  if (auto shared = first_shared_gpu(gpus)) {
    *refused = detail::concat("ranks ", shared->first, " and ", shared->second, " share the GPU ",
                              gpus[shared->first], ", and NCCL needs one GPU per rank (start at ",
                              "most as many ranks per node as it has GPUs)");
    return nullptr;
  }
  ncclUniqueId id;
  if (mpi->rank() == 0 && ncclGetUniqueId(&id) != ncclSuccess)
    HETMOE_FAIL("comm", "ncclGetUniqueId failed");
  at::Tensor bytes = at::empty({static_cast<int64_t>(sizeof id)}, at::kByte);
  if (mpi->rank() == 0) std::memcpy(bytes.data_ptr(), &id, sizeof id);
  mpi->broadcast(bytes, 0);
  std::memcpy(&id, bytes.data_ptr(), sizeof id);
  // ncclCommInitRank waits for every rank without a deadline; a timed barrier first turns a rank
  // that never gets there into a named timeout here. (A rank that dies between the barrier and
  // its own ncclCommInitRank still leaves the others to NCCL's bootstrap timeouts.)
  mpi->barrier();
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRank(&comm, mpi->size(), id, mpi->rank());
  HETMOE_CHECK(r == ncclSuccess, "comm", "ncclCommInitRank on rank ", mpi->rank(), " of ",
               mpi->size(), " failed: ", ncclGetErrorString(r), " (", ncclGetLastError(nullptr),
               ")");
  return std::make_unique<NcclCommunicator>(comm, "world", timeout_s);
}

}  // namespace comm_detail
}  // namespace hetmoe
