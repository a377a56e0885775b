// The communicator under mpirun (2 and 4 ranks): every operation against the same computation
// done in one process, uneven all-to-all with zero splits, sub-communicators, and (in its own
// run, HETMOE_TEST_WITHHOLD=1) the timeout path. Every rank runs every test; the exit code is
// the same on all ranks. HETMOE_TEST_COMM=nccl runs them through NCCL; =nccl_shared checks that
// ranks sharing one GPU get MPI instead.
#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>
#include <nlohmann/json.hpp>

#include "hetmoe/comm/communicator.h"
#include "hetmoe/config/config.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/model/transformer.h"
#include "hetmoe/train/checkpoint.h"
#include "support/error_of.h"
#include "support/temp_dir.h"

namespace hetmoe {
namespace {

Communicator* world = nullptr;

CommOptions mpi_options(double timeout_s = 60) {
  CommOptions o;
  o.backend = "mpi";
  o.strict = true;
  o.timeout_s = timeout_s;
  return o;
}

// What rank r contributes in the reduction tests: a pure function of (r, shape).
at::Tensor contribution(int r, at::ScalarType dtype) {
  return (at::arange(12, at::kDouble).view({3, 4}) * (r + 1) + r).to(dtype);
}

TEST(MpiCommTest, AllReduceSumAvgMaxMatchOneProcess) {
  const int n = world->size(), r = world->rank();
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kLong, at::kBFloat16}) {
    at::Tensor expect_sum = at::zeros({3, 4}, at::kDouble),
               expect_max = contribution(0, at::kDouble);
    for (int q = 0; q < n; ++q) {
      expect_sum += contribution(q, at::kDouble);
      expect_max = at::maximum(expect_max, contribution(q, at::kDouble));
    }
    at::Tensor s = contribution(r, dtype), a = contribution(r, dtype), m = contribution(r, dtype);
    world->all_reduce(s, ReduceOp::Sum);
    world->all_reduce(a, ReduceOp::Avg);
    world->all_reduce(m, ReduceOp::Max);
    EXPECT_EQ(s.scalar_type(), dtype);
    const double tol = dtype == at::kBFloat16 ? 0.5 : 1e-9;
    EXPECT_TRUE(at::allclose(s.to(at::kDouble), expect_sum, 0, tol)) << dtype;
    at::Tensor expect_avg = dtype == at::kLong ? at::floor_divide(expect_sum, n) : expect_sum / n;
    EXPECT_TRUE(at::allclose(a.to(at::kDouble), expect_avg, 1e-2, tol)) << dtype;
    EXPECT_TRUE(at::allclose(m.to(at::kDouble), expect_max, 0, tol)) << dtype;
  }
}

TEST(MpiCommTest, AllGatherReduceScatterBroadcastBarrier) {
  const int n = world->size(), r = world->rank();
  at::Tensor mine = at::full({2, 3}, static_cast<float>(r));
  at::Tensor all = world->all_gather(mine);
  ASSERT_EQ(all.sizes(), (std::vector<int64_t>{2 * n, 3}));
  for (int q = 0; q < n; ++q)
    EXPECT_TRUE(at::equal(all.narrow(0, 2 * q, 2), at::full({2, 3}, float(q))));

  at::Tensor big = at::arange(2 * n * 3, at::kFloat).view({2 * n, 3}) + r;
  at::Tensor part = world->reduce_scatter(big, ReduceOp::Sum);
  at::Tensor full = at::arange(2 * n * 3, at::kFloat).view({2 * n, 3}) * n + n * (n - 1) / 2;
  EXPECT_TRUE(at::equal(part, full.narrow(0, 2 * r, 2)));

  at::Tensor b = r == n - 1 ? at::arange(5, at::kLong) : at::zeros({5}, at::kLong);
  world->broadcast(b, n - 1);
  EXPECT_TRUE(at::equal(b, at::arange(5, at::kLong)));
  world->barrier();
  EXPECT_THROW(world->broadcast(b, n), CommError);
}

// Rows rank `src` sends to rank `dst`: (src + 2 * dst) % 3 of them, so some pairs (including
// rank to itself) exchange nothing. Each row says where it came from and where it goes.
int64_t rows_between(int src, int dst) {
  return (src + 2 * dst) % 3;
}
at::Tensor rows_for(int src, int dst) {
  const int64_t k = rows_between(src, dst);
  at::Tensor rows = at::empty({k, 3}, at::kFloat);
  for (int64_t i = 0; i < k; ++i) {
    rows[i][0] = src;
    rows[i][1] = dst;
    rows[i][2] = static_cast<float>(i);
  }
  return rows;
}

TEST(MpiCommTest, UnevenAllToAllWithZeroSplitsMatchesOneProcess) {
  const int n = world->size(), r = world->rank();
  std::vector<at::Tensor> blocks;
  std::vector<int64_t> send(n), recv(n);
  for (int q = 0; q < n; ++q) {
    blocks.push_back(rows_for(r, q));
    send[q] = rows_between(r, q);
    recv[q] = rows_between(q, r);
  }
  at::Tensor out = world->all_to_all(at::cat(blocks), send, recv);
  std::vector<at::Tensor> expect;
  for (int q = 0; q < n; ++q) expect.push_back(rows_for(q, r));
  EXPECT_TRUE(at::equal(out, at::cat(expect)));

  // Rank 0 sends nothing (an empty [0, 3] input) but receives two rows from every other rank:
  // an expert with no local tokens still gets remote ones.
  std::vector<int64_t> s0(n, 0), r0(n, 0);
  if (r == 0) {
    for (int q = 1; q < n; ++q) r0[q] = 2;
  } else {
    s0[0] = 2;
  }
  at::Tensor in = r == 0 ? at::empty({0, 3}) : at::full({2, 3}, float(r));
  at::Tensor got = world->all_to_all(in, s0, r0);
  if (r == 0) {
    ASSERT_EQ(got.size(0), 2 * (n - 1));
    for (int q = 1; q < n; ++q)
      EXPECT_TRUE(at::equal(got.narrow(0, 2 * (q - 1), 2), at::full({2, 3}, float(q))));
  } else {
    EXPECT_EQ(got.size(0), 0);
  }

  // Integer rows and a rank that sends nothing at all.
  std::vector<int64_t> none(n, 0);
  at::Tensor empty = world->all_to_all(at::empty({0, 2}, at::kLong), none, none);
  EXPECT_EQ(empty.size(0), 0);
  // Splits that do not sum to the rows are refused before any communication.
  send[0] += 1;
  EXPECT_THROW(world->all_to_all(at::cat(blocks), send, recv), CommError);
}

// all_to_all_start: the same rows as all_to_all, with work done while they travel. Rows of
// 256 KiB go beyond every eager limit, so the transfer really is in flight during the work.
TEST(MpiCommTest, BegunAllToAllDeliversTheSameRowsWithWorkInBetween) {
  const int n = world->size(), r = world->rank();
  constexpr int64_t kWidth = 64 << 10;
  std::vector<int64_t> send(n), recv(n);
  std::vector<at::Tensor> blocks, expect;
  // 1 to 3 rows between every pair, a rank's own rows included (one rank under NCCL still
  // moves data).
  auto rows = [](int src, int dst) { return rows_between(src, dst) + 1; };
  auto block = [&](int src, int dst) {
    const int64_t k = rows(src, dst);
    return at::arange(k * kWidth, at::kFloat).view({k, kWidth}) + 1000 * src + 100 * dst;
  };
  for (int q = 0; q < n; ++q) {
    send[q] = rows(r, q);
    recv[q] = rows(q, r);
    blocks.push_back(block(r, q));
    expect.push_back(block(q, r));
  }
  const at::Tensor input = at::cat(blocks);
  auto pending = world->all_to_all_start(input, send, recv);
  at::Tensor a = at::randn({256, 256});
  const at::Tensor work = at::mm(a, a).sum();  // the overlapped computation
  EXPECT_TRUE(std::isfinite(work.item<float>()));
  at::Tensor got = pending->wait();
  EXPECT_TRUE(at::equal(got, at::cat(expect)));
  EXPECT_TRUE(at::equal(pending->wait(), got)) << "a second wait returns the same rows";

  // Into a caller's buffer, and a pending exchange dropped without wait(): it is completed on
  // destruction, so the next collective on the communicator is not confused by it.
  at::Tensor buffer = at::empty({got.size(0), kWidth});
  world->all_to_all_start(input, send, recv, buffer).reset();
  EXPECT_TRUE(at::equal(buffer, got));
  at::Tensor after = world->all_to_all(input, send, recv);
  EXPECT_TRUE(at::equal(after, got));
  // The same argument checks as the blocking call, before anything is sent: splits that do not
  // sum to the rows, and a rank expecting other than what it sends itself.
  send[0] += 1;
  EXPECT_THROW(world->all_to_all_start(input, send, recv), CommError);
  send[0] -= 1;
  recv[r] += 1;
  EXPECT_THROW(world->all_to_all_start(input, send, recv), CommError);
}

// The optimizer state a test checkpoint holds for a model: a pure function of its weights, so
// a shard's and the unsharded model's agree row for row.
std::map<std::string, at::Tensor> optimizer_state_of(const Transformer& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m->named_parameters()) {
    out["exp_avg/" + p.key()] = p.value() * 2 + 1;
    out["exp_avg_sq/" + p.key()] = p.value() * p.value();
  }
  out["step"] = at::scalar_tensor(3, at::kLong);
  return out;
}

// A checkpoint written by an expert-parallel grid (2 experts per rank, expert_parallel 2, with
// data-parallel replicas at 4 ranks) loads as the whole model, and resharded as any other grid's
// shard: each rank's shard is initialised as the slice of the unsharded model, so the gathered
// and recut tensors must equal that model's exactly, optimizer state included.
TEST(ShardedCheckpointTest, LoadsAsTheWholeModelAndAsAnyGridsShard) {
  const int n = world->size(), r = world->rank();
  const int64_t ep = 2;
  if (n % ep != 0) GTEST_SKIP() << "needs a world that expert_parallel 2 divides, not " << n;
  const Config c = parse_config(
      "model: {d_model: 32, n_layers: 2, n_heads: 2, n_kv_heads: 1, max_seq_len: 16, "
      "first_k_dense: 1, dense_ffn_hidden: 32}\n"
      "moe: {num_experts: 4, top_k: 2, expert_hidden: 16}\n"
      "train: {seq_len: 8, micro_batch: 4}\n"
      "data: {path: unused}\n"
      "parallel: {expert_parallel: 2}\n",
      "sharded-checkpoint test");
  const int64_t per_rank = c.moe.num_experts / ep;
  Transformer shard(c.model, c.moe, ExpertShard{(r % ep) * per_rank, per_rank});
  shard->reset_parameters(11);
  // One directory for the job, named by rank 0's pid.
  at::Tensor pid = at::full({1}, static_cast<int64_t>(::getpid()), at::kLong);
  world->broadcast(pid, 0);
  const std::string out = "/tmp/hetmoe-sharded-ckpt-" + std::to_string(pid.item<int64_t>());
  TrainState state;
  state.step = 3;
  CheckpointShard where;
  where.rank = r;
  where.world = n;
  where.expert_parallel = ep;
  where.comm = world;
  save_checkpoint(out, c, state, shard->state_tensors(), optimizer_state_of(shard), where);
  if (r == 0) {
    const LoadedCheckpoint whole = load_whole_model(out, TransformerImpl::is_expert_parameter);
    EXPECT_EQ(whole.state.step, 3);
    Transformer reference(c.model, c.moe);
    reference->reset_parameters(11);
    for (const auto& [name, t] : reference->state_tensors()) {
      auto it = whole.model.find(name);
      ASSERT_NE(it, whole.model.end()) << name;
      EXPECT_TRUE(at::equal(it->second, t)) << name;
    }
    EXPECT_NO_THROW(reference->load_state_tensors(whole.model, whole.dir));
    // The per-rank loader refuses another grid unless told which tensors are sharded.
    EXPECT_THROW(load_checkpoint(out, false), Error);
    // Resharded: every rank of these grids gets its slice of the unsharded model and optimizer
    // state (one process; fewer experts per rank than written, more, and data-parallel copies).
    const std::map<std::string, at::Tensor> want_optimizer = optimizer_state_of(reference);
    for (const auto& [world_size, expert_parallel] :
         std::vector<std::pair<int, int64_t>>{{1, 1}, {2, 1}, {2, 2}, {4, 4}, {8, 4}}) {
      for (int rank = 0; rank < world_size; ++rank) {
        CheckpointShard as;
        as.rank = rank;
        as.world = world_size;
        as.expert_parallel = expert_parallel;
        const LoadedCheckpoint part =
            load_checkpoint(out, true, as, TransformerImpl::is_expert_parameter);
        const int64_t count = c.moe.num_experts / expert_parallel;
        const int64_t first = (rank % expert_parallel) * count;
        const std::string grid = "rank " + std::to_string(rank) + " of " +
                                 std::to_string(world_size) + ", expert_parallel " +
                                 std::to_string(expert_parallel);
        auto expect_slices = [&](const std::map<std::string, at::Tensor>& got,
                                 const std::map<std::string, at::Tensor>& full) {
          ASSERT_EQ(got.size(), full.size()) << grid;
          for (const auto& [name, t] : full) {
            auto it = got.find(name);
            ASSERT_NE(it, got.end()) << grid << ": " << name;
            const at::Tensor want =
                TransformerImpl::is_expert_parameter(name) ? t.narrow(0, first, count) : t;
            EXPECT_TRUE(at::equal(it->second, want)) << grid << ": " << name;
          }
        };
        expect_slices(part.model, reference->state_tensors());
        expect_slices(part.optimizer, want_optimizer);
        // What the trainer does with it: the shard's model takes the tensors as they are.
        Transformer target(c.model, c.moe, ExpertShard{first, count});
        EXPECT_NO_THROW(target->load_state_tensors(part.model, part.dir)) << grid;
      }
    }
    // A shard file that is not the one its name says (swapped, and the manifest's checksum
    // made to fit) is refused: rank 1's file under rank 0's name.
    const std::filesystem::path step = std::filesystem::path(out) / "checkpoints" / "step_00000003";
    char mine[64], other[64];
    std::snprintf(mine, sizeof mine, "model-rank00000-of-%05d.safetensors", n);
    std::snprintf(other, sizeof other, "model-rank00001-of-%05d.safetensors", n);
    std::filesystem::copy_file(step / other, step / mine,
                               std::filesystem::copy_options::overwrite_existing);
    nlohmann::json manifest = nlohmann::json::parse(test_support::file_text(step / "state.json"));
    manifest["files"][mine] = manifest["files"][other];
    std::ofstream(step / "state.json", std::ios::trunc) << manifest.dump(2);
    CheckpointShard as_rank0 = where;
    as_rank0.comm = nullptr;
    const std::string error =
        test_support::error_of([&] { load_checkpoint(out, false, as_rank0); });
    EXPECT_NE(error.find(std::string(mine) + "' holds the shard of rank 1 of " + std::to_string(n) +
                         ", expert_parallel 2, not of rank 0 of " + std::to_string(n) +
                         ", expert_parallel 2"),
              std::string::npos)
        << error;
    std::string why;
    EXPECT_TRUE(remove_tree(out, &why)) << why;
  }
  world->barrier();
}

TEST(MpiCommTest, SubCommunicatorsReduceWithinTheirColor) {
  const int n = world->size(), r = world->rank();
  auto sub = world->split(r % 2, r, "parity");
  EXPECT_EQ(sub->name(), "parity");
  EXPECT_EQ(sub->size(), (n + 1 - r % 2) / 2);
  EXPECT_EQ(sub->rank(), r / 2);
  at::Tensor t = at::full({1}, static_cast<double>(r), at::kDouble);
  sub->all_reduce(t, ReduceOp::Sum);
  double expect = 0;
  for (int q = r % 2; q < n; q += 2) expect += q;
  EXPECT_EQ(t.item<double>(), expect);
  // The sub-communicator's all-to-all is independent of the world's.
  std::vector<int64_t> one(sub->size(), 1);
  at::Tensor back = sub->all_to_all(at::full({sub->size(), 1}, float(r)), one, one);
  for (int q = 0; q < sub->size(); ++q) EXPECT_EQ(back[q].item<float>(), float(r % 2 + 2 * q));
}

TEST(MpiCommTest, ErrorsNameOperationCommunicatorRankAndStep) {
  world->set_step(42);
  try {
    std::vector<int64_t> one_too_many(world->size() + 1, 0);
    world->all_to_all(at::zeros({0, 1}), one_too_many, one_too_many);
    FAIL() << "expected a CommError";
  } catch (const CommError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("all_to_all on 'world' (" + world->backend() + ", rank " +
                     std::to_string(world->rank()) + " of " + std::to_string(world->size()) +
                     ") at step 42"),
              std::string::npos)
        << m;
  }
  world->set_step(0);
}

// Rank 1 withholds an all_reduce: every other rank must fail with the named error soon after
// the 2 s deadline, then take the job down. Run by tests/mpi/timeout_test.sh, which checks the
// message, the exit status and the time.
int withhold_main() {
  auto w = make_world_communicator(mpi_options(2.0), c10::DeviceType::CPU);
  w->set_step(7);
  at::Tensor t = at::ones({4});
  if (w->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(60));  // a hung rank
    return 0;
  }
  const auto start = std::chrono::steady_clock::now();
  try {
    w->all_reduce(t, ReduceOp::Sum);
  } catch (const CommError& e) {
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "rank %d caught after %.1f s: %s\n", w->rank(), waited, e.what());
    abort_job(3);
    return 3;
  }
  std::fprintf(stderr, "rank %d: all_reduce returned without its peer\n", w->rank());
  return 0;
}

// Every rank on cuda:0 (HETMOE_TEST_COMM=nccl_shared, 2 ranks on any GPU machine): NCCL would
// fail with "invalid usage", so comm.backend nccl with comm.strict must be refused with the
// reason, and auto must give MPI. Exit 77 (ctest: skipped) where no GPU is visible.
int shared_gpu_main() {
  if (!at::hasCUDA()) {
    std::fprintf(stderr, "skipped: needs a CUDA device, none is visible\n");
    return 77;
  }
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(c10::Device("cuda:0"));
  int failed = 0;
  CommOptions strict{"nccl", true, 60};
  try {
    make_world_communicator(strict, c10::DeviceType::CUDA);
    std::fprintf(stderr, "FAIL: NCCL accepted ranks that share one GPU\n");
    failed = 1;
  } catch (const Error& e) {
    const std::string what = e.what();
    std::fprintf(stderr, "strict nccl refused: %s\n", what.c_str());
    if (what.find("share the GPU") == std::string::npos ||
        what.find("comm.strict is on") == std::string::npos) {
      std::fprintf(stderr, "FAIL: the refusal does not say that ranks share a GPU\n");
      failed = 1;
    }
  }
  auto comm = make_world_communicator(CommOptions{"auto", false, 60}, c10::DeviceType::CUDA);
  if (comm->backend() != "mpi") {
    std::fprintf(stderr, "FAIL: auto chose %s for ranks that share one GPU\n",
                 comm->backend().c_str());
    failed = 1;
  }
  at::Tensor any = at::full({1}, failed, at::kInt);
  comm->all_reduce(any, ReduceOp::Max);
  return any.item<int>();
}

}  // namespace
}  // namespace hetmoe

int main(int argc, char** argv) {
  using namespace hetmoe;
  if (const char* w = std::getenv("HETMOE_TEST_WITHHOLD"); w && std::string(w) == "1")
    return withhold_main();
  if (const char* c = std::getenv("HETMOE_TEST_COMM"); c && std::string(c) == "nccl_shared")
    return shared_gpu_main();
  ::testing::InitGoogleTest(&argc, argv);
  // HETMOE_TEST_COMM=nccl runs the same tests through the NCCL transport (host tensors staged
  // through the GPU); exit code 77 (ctest: skipped) where no GPU is visible.
  CommOptions options = mpi_options();
  c10::DeviceType device = c10::DeviceType::CPU;
  if (const char* c = std::getenv("HETMOE_TEST_COMM"); c && std::string(c) == "nccl") {
    if (!at::hasCUDA()) {
      std::fprintf(stderr, "skipped: the NCCL transport needs a CUDA device, none is visible\n");
      return 77;
    }
    options.backend = "nccl";
    device = c10::DeviceType::CUDA;
  }
  auto comm = make_world_communicator(options, device);
  world = comm.get();
  if (world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  at::Tensor any = at::full({1}, failed, at::kInt);
  world->all_reduce(any, ReduceOp::Max);
  return any.item<int>();
}
