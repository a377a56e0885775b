// The CPU backend's handle on libhetmoe_dnnl.so (kernels/cpu/dnnl): loaded once, on first use,
// with its own symbol scope. Absent or unloadable, the CPU kernels use LibTorch's BLAS instead.
#pragma once

#include <cstdint>
#include <string>

namespace hetmoe::cpu {

struct DnnlGemm {
  int (*sgemm)(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc) = nullptr;
  std::string path;         // the module that was loaded
  std::string description;  // oneDNN version and runtime
};

// The loaded module, or nullptr when there is none; dnnl_status() says which and why.
// Looked up, in order: $HETMOE_DNNL_LIBRARY (a path; "off" disables oneDNN), next to
// libhetmoe.so, then the dynamic linker's search path.
const DnnlGemm* dnnl_gemm();
const std::string& dnnl_status();

}  // namespace hetmoe::cpu
