// The CPU backend's MoE kernel table (kernels/cpu/moe_cpu_kernels.cpp).
#pragma once

#include "hetmoe/device/kernels.h"

namespace hetmoe::cpu {

// Fused routing, counting-sort permutation and combine loops over at::parallel_for, and the
// grouped expert GEMMs through oneDNN (fp32) or LibTorch's BLAS.
const MoEKernels& cpu_moe_kernels();

// The table's GEMM on its own: oneDNN for fp32 when the module is loaded, else LibTorch's; in
// bf16 and fp16 LibTorch's, split into few shapes so that its compiled kernels stay cached.
void cpu_matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

}  // namespace hetmoe::cpu
