// The C interface of libhetmoe_dnnl.so, hetmoe's oneDNN GEMM module. It is a separate shared
// object, linked against Debian's oneDNN and nothing from LibTorch, and loaded at run time with
// its own symbol scope (RTLD_DEEPBIND), so its oneDNN calls can only reach the oneDNN it was
// built against, whatever the process also loaded (PyPI LibTorch bundles its own oneDNN). Plain C
// types only cross this boundary: no exceptions, no allocation on one side freed on the other.
#pragma once

#include <stdint.h>

#define HETMOE_DNNL_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature below changes; the loader refuses a module of another version.
#define HETMOE_DNNL_ABI_VERSION 1

HETMOE_DNNL_API int hetmoe_dnnl_abi_version(void);

// "oneDNN 2.6.3 (cpu runtime OMP, isa avx512_core_bf16)"-style description.
HETMOE_DNNL_API const char* hetmoe_dnnl_describe(void);

// Row-major C = alpha * op(A) * op(B) + beta * C with op(X) = X ('N') or X^T ('T'); A is m x k
// after op, B is k x n after op, C is m x n. Returns 0 on success, else the oneDNN status.
HETMOE_DNNL_API int hetmoe_dnnl_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k,
                                      float alpha, const float* a, int64_t lda, const float* b,
                                      int64_t ldb, float beta, float* c, int64_t ldc);

#ifdef __cplusplus
}
#endif
