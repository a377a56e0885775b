// Link-time stub: this build has no CUDA backend.
#include "hetmoe/device/registry.h"

namespace hetmoe {
std::unique_ptr<Backend> make_cuda_backend() {
  return nullptr;
}
}  // namespace hetmoe
