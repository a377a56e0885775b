// The transports behind make_world_communicator. Each is built in or replaced by a stub
// (src/comm/no_mpi.cpp, no_nccl.cpp), so the factory carries no #ifdef.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hetmoe/comm/communicator.h"

namespace hetmoe::comm_detail {

std::unique_ptr<Communicator> make_local(const std::string& name, double timeout_s);

// MPI: built when HETMOE_WITH_MPI resolved on. make_mpi_world initialises MPI on first use.
bool mpi_built();
std::string mpi_version();
std::unique_ptr<Communicator> make_mpi_world(double timeout_s);
bool mpi_active();  // initialised and not finalised
void mpi_abort(int exit_code);

// NCCL: built when HETMOE_WITH_NCCL resolved on (CUDA builds). Bootstraps over MPI. NCCL
// refuses two ranks on one GPU ("invalid usage"), so make_nccl_world first compares the ranks'
// GPUs and, when two share one, returns nullptr with the reason in *refused.
bool nccl_built();
std::string nccl_version();
std::unique_ptr<Communicator> make_nccl_world(double timeout_s, std::string* refused);

// Each rank's GPU as one string (its UUID), in rank order: the first two ranks that
// name the same GPU, if any.
std::optional<std::pair<int, int>> first_shared_gpu(const std::vector<std::string>& gpus);

}  // namespace hetmoe::comm_detail
