// Link-time stub: this build has no ROCm backend (its LibTorch is not a ROCm build).
#include "hetmoe/device/registry.h"

namespace hetmoe {
std::unique_ptr<Backend> make_rocm_backend() {
  return nullptr;
}
}  // namespace hetmoe
