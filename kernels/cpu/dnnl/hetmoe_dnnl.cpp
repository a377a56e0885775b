// libhetmoe_dnnl.so: oneDNN's GEMM behind a C interface (see hetmoe_dnnl.h). No LibTorch header
// may be included here: LibTorch's include directory carries its own, newer oneDNN headers.
#include "hetmoe_dnnl.h"

#include <dnnl.h>

#include <cstdio>
#include <string>

extern "C" {

int hetmoe_dnnl_abi_version(void) {
  return HETMOE_DNNL_ABI_VERSION;
}

const char* hetmoe_dnnl_describe(void) {
  static const std::string text = [] {
    const dnnl_version_t* v = dnnl_version();
    const char* runtime = v->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
                          : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                          : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                               : "other";
    char buf[160];
    std::snprintf(buf, sizeof buf, "oneDNN %d.%d.%d (%s runtime)", v->major, v->minor, v->patch,
                  runtime);
    return std::string(buf);
  }();
  return text.c_str();
}

int hetmoe_dnnl_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc) {
  return static_cast<int>(dnnl_sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc));
}

}  // extern "C"
