// All-to-all bandwidth of hetmoe's communicator against raw MPI_Alltoallv on the same buffers.
//   mpirun -np N hetmoe_comm_bench [out.json]
// For each total size S a rank sends (4 KiB .. 64 MiB), split evenly over the N ranks, both
// exchange the same bytes: the communicator through Communicator::all_to_all into a reused
// output buffer, MPI through one blocking MPI_Alltoallv. Each figure is the median of 7 timed
// batches, the two interleaved so drift hits both alike. Bandwidth: bytes a rank sends per second.
#include <ATen/ATen.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "hetmoe/comm/communicator.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  hetmoe::CommOptions options;
  options.backend = "mpi";
  options.strict = true;
  auto world = hetmoe::make_world_communicator(options, c10::DeviceType::CPU);
  const int n = world->size(), rank = world->rank();
  const int64_t row_floats = 64;  // 256-byte rows
  const int64_t row_bytes = row_floats * 4;
  struct Row {
    int64_t bytes;
    double hetmoe_gbs, mpi_gbs;
  };
  std::vector<Row> rows;
  for (int64_t total = 4 << 10; total <= (64 << 20); total *= 4) {
    const int64_t rows_per_peer = std::max<int64_t>(1, total / row_bytes / n);
    std::vector<int64_t> splits(n, rows_per_peer);
    at::Tensor in = at::randn({rows_per_peer * n, row_floats});
    at::Tensor out = at::empty_like(in);
    std::vector<int> counts(n, static_cast<int>(rows_per_peer * row_bytes)), displs(n);
    for (int q = 0; q < n; ++q) displs[q] = q * counts[q];
    const int64_t bytes = rows_per_peer * n * row_bytes;
    const int iters = static_cast<int>(std::clamp<int64_t>((256 << 20) / bytes, 3, 2000));
    auto time_hetmoe = [&] {
      world->barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) world->all_to_all(in, splits, splits, out);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    };
    auto time_mpi = [&] {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i)
        MPI_Alltoallv(in.data_ptr(), counts.data(), displs.data(), MPI_BYTE, out.data_ptr(),
                      counts.data(), displs.data(), MPI_BYTE, MPI_COMM_WORLD);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    };
    time_hetmoe();
    time_mpi();  // warm-up
    std::vector<double> th, tm;
    for (int rep = 0; rep < 7; ++rep) {
      th.push_back(time_hetmoe());
      tm.push_back(time_mpi());
    }
    // The slowest rank sets a collective's time.
    at::Tensor t = at::tensor({median(th), median(tm)}, at::kDouble);
    world->all_reduce(t, hetmoe::ReduceOp::Max);
    rows.push_back({bytes, bytes / t[0].item<double>() / 1e9, bytes / t[1].item<double>() / 1e9});
  }
  if (rank == 0) {
    std::printf("all-to-all, %d ranks: bytes each rank sends, GB/s\n", n);
    std::printf("%12s %10s %10s %8s\n", "bytes", "hetmoe", "MPI", "ratio");
    std::string json = "{\"ranks\": " + std::to_string(n) + ", \"rows\": [";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf("%12lld %10.3f %10.3f %7.1f%%\n", static_cast<long long>(r.bytes), r.hetmoe_gbs,
                  r.mpi_gbs, 100 * r.hetmoe_gbs / r.mpi_gbs);
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s{\"bytes\": %lld, \"hetmoe_gbs\": %.4f, \"mpi_gbs\": %.4f}",
                    i ? ", " : "", static_cast<long long>(r.bytes), r.hetmoe_gbs, r.mpi_gbs);
      json += buf;
    }
    json += "]}\n";
    if (argc > 1) std::ofstream(argv[1]) << json;
  }
  return 0;
}
