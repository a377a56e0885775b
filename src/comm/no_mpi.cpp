// Stub for builds without MPI: the factory never picks it.
#include "comm/transports.h"

namespace hetmoe::comm_detail {
bool mpi_built() {
  return false;
}
std::string mpi_version() {
  return "";
}
std::unique_ptr<Communicator> make_mpi_world(double) {
  HETMOE_FAIL("comm", "this hetmoe was built without MPI (HETMOE_WITH_MPI)");
}
bool mpi_active() {
  return false;
}
void mpi_abort(int) {}
}  // namespace hetmoe::comm_detail
