// Stub for builds without NCCL: the factory never picks it.
#include "comm/transports.h"

namespace hetmoe::comm_detail {
bool nccl_built() {
  return false;
}
std::string nccl_version() {
  return "";
}
std::unique_ptr<Communicator> make_nccl_world(double, std::string*) {
  HETMOE_FAIL("comm", "this hetmoe was built without NCCL (HETMOE_WITH_NCCL)");
}
}  // namespace hetmoe::comm_detail
