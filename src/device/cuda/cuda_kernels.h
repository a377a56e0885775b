// The CUDA backend's MoE kernel table (kernels/gpu wrapped for at::Tensor).
#pragma once

#include "hetmoe/device/kernels.h"

namespace hetmoe {
const MoEKernels& cuda_moe_kernels();
}  // namespace hetmoe
