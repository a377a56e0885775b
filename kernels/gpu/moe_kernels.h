// GPU MoE kernels, one source for CUDA and HIP: plain pointers, sizes and a stream in, an error
// code out (0 = success, else the runtime's code; error_string() names it). No LibTorch types, so
// nvcc and hipcc compile them without a GPU. The backend glue (src/device/gpu, one source for the
// CUDA and the ROCm backend) wraps them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hetmoe::gpu {

using Stream = void*;  // cudaStream_t or hipStream_t
enum class DType { F32, BF16 };

// The most experts router_forward and permute_map take (one block scans the experts' offsets).
constexpr int kMaxExperts = 1024;
// The largest top_k the router kernels take (the backward keeps k floats per thread).
constexpr int kMaxTopK = 32;

const char* error_string(int code);

// ---- device queries ------------------------------------------------------------------------

struct DeviceProps {
  char name[256];
  char arch[64];  // "sm_90"; under HIP the gcnArchName, e.g. "gfx942:sramecc+:xnack-"
  int major, minor;
  int multiprocessors;  // SMs or compute units
  int clock_khz;        // peak engine clock
  int64_t memory_bytes;
  int64_t l2_bytes;
};

// Devices the runtime sees (0, with the runtime's code, when there is no driver).
int device_count(int* count);
// True for the runtime's "no device" code: a machine without a GPU, not a failure.
bool is_no_device(int code);
int device_props(int device, DeviceProps* out);

// ---- kernels -------------------------------------------------------------------------------

// Fused router, one pass per token with no host synchronisation: scores = softmax or sigmoid of
// the fp32 logits [n, e]; selection by score + bias (bias may be null) among the experts of the
// token's topk_groups best groups (n_groups contiguous groups, each scored by the sum of its
// group_members best members; n_groups == 1 disables it); top-k best first, ties to the lower
// id; weights = the unbiased scores of the chosen experts (renormalised when asked);
// tokens-per-expert counts (zeroed here, then accumulated). e <= kMaxExperts, k <= kMaxTopK,
// n_groups <= 64.
int router_forward(const float* logits, const float* bias, int64_t n, int e, int k, int n_groups,
                   int topk_groups, int group_members, bool sigmoid, bool renormalize,
                   float* scores, int64_t* index, float* weight, int64_t* counts, Stream stream);

// Gradient of the logits from the gradients of scores (may be null) and of weight (may be null).
// 1 <= k <= kMaxTopK, else the runtime's invalid-value code.
int router_backward(const float* grad_scores, const float* grad_weight, const float* scores,
                    const int64_t* index, int64_t n, int e, int k, bool sigmoid, bool renormalize,
                    float* grad_logits, Stream stream);

// Workspace (bytes) permute_map needs for n_slots routing slots and e experts.
size_t permute_workspace_bytes(int64_t n_slots, int e);

// Stable counting sort of the routing slots by expert, computed on the device: slot[row],
// source_row[row] (= slot / k), row_of_slot[slot] and counts[e]. Rows of one expert keep slot
// order, so the result equals a stable sort's. 1 <= e <= kMaxExperts. An index outside [0, e)
// fails a device-side check (the CPU backend throws there) and is never used as an address.
int permute_map(const int64_t* index, int64_t n_slots, int e, int k, void* workspace, int64_t* slot,
                int64_t* source_row, int64_t* row_of_slot, int64_t* counts, Stream stream);

// out[i, :] = x[rows[i], :] for i < m.
int gather_rows(const void* x, DType dtype, int64_t hidden, const int64_t* rows, int64_t m,
                void* out, Stream stream);

// Backward of permute: grad_x[t] = sum_j grad_permuted[row_of_slot[t*k + j]] (fp32 accumulation;
// slots with row_of_slot -1, dropped over capacity, contribute nothing).
int sum_slot_rows(const void* grad_permuted, DType dtype, int64_t hidden,
                  const int64_t* row_of_slot, int64_t n, int k, void* grad_x, Stream stream);

// out[t] = sum_j weight[t*k + j] * y[row_of_slot[t*k + j]] (fp32 weights and accumulation).
int unpermute_forward(const void* y, DType dtype, int64_t hidden, const float* weight,
                      const int64_t* row_of_slot, int64_t n, int k, void* out, Stream stream);

// grad_y[i] = weight[slot[i]] * grad_out[source_row[i]];
// grad_weight[slot[i]] = <grad_out[source_row[i]], y[i]>, for i < m = n * k.
int unpermute_backward(const void* grad_out, const void* y, DType dtype, int64_t hidden,
                       const float* weight, const int64_t* source_row, const int64_t* slot,
                       int64_t m, void* grad_y, float* grad_weight, Stream stream);

// a = silu(h[:, :f]) * h[:, f:] for h [m, 2f].
int swiglu_forward(const void* h, DType dtype, int64_t m, int64_t f, void* a, Stream stream);
// grad_h [m, 2f] from grad_a [m, f] and h.
int swiglu_backward(const void* grad_a, const void* h, DType dtype, int64_t m, int64_t f,
                    void* grad_h, Stream stream);

}  // namespace hetmoe::gpu
