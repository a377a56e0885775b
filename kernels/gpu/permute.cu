// Permute / unpermute on the device: a stable counting sort of the routing slots by expert (no
// host synchronisation; the tokens-per-expert offsets stay on the device), row gathers, and the
// weighted k-way combine with its backward. Every reduction is a gather in a fixed order, so the
// results do not depend on thread scheduling.
#include <type_traits>

#include "compat.h"
#include "moe_kernels.h"

namespace hetmoe::gpu {
namespace {

constexpr int kChunk = 256;    // routing slots per block in the counting sort
constexpr int kThreads = 256;  // threads per block elsewhere

int64_t num_chunks(int64_t n_slots) {
  return (n_slots + kChunk - 1) / kChunk;
}

// Pass 1: per-chunk histogram of expert ids -> hist[chunk * e + expert].
__global__ void chunk_histogram(const int64_t* __restrict__ index, int64_t n_slots, int e,
                                int64_t* __restrict__ hist) {
  extern __shared__ int local[];
  for (int i = threadIdx.x; i < e; i += blockDim.x) local[i] = 0;
  __syncthreads();
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  if (s < n_slots) {
    // The CPU backend throws on a bad index; here, without waiting for the host, the kernel fails
    // its device-side check instead (every later pass skips the slot, so nothing is written out of
    // bounds before the failure surfaces).
    const int64_t x = index[s];
    HETMOE_DEVICE_CHECK(x >= 0 && x < e);
    if (x >= 0 && x < e) atomicAdd(&local[x], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < e; i += blockDim.x)
    hist[blockIdx.x * static_cast<int64_t>(e) + i] = local[i];
}

// Pass 2 (one block): turn the histograms into the first output row of each (chunk, expert):
// the expert's offset plus the expert's rows in earlier chunks. Also writes counts. Each thread
// walks its experts' column through every chunk, so this pass is serial in n_slots / kChunk; at
// a million slots and 256 experts it moves about 25 MB through one SM. A multi-block scan would
// lift that if a profile shows this pass.
__global__ void chunk_offsets(int64_t chunks, int e, int64_t* __restrict__ hist,
                              int64_t* __restrict__ counts) {
  __shared__ int64_t base[kMaxExperts];  // the glue refuses more experts
  for (int x = threadIdx.x; x < e; x += blockDim.x) {
    int64_t total = 0;
    for (int64_t b = 0; b < chunks; ++b) {
      const int64_t c = hist[b * e + x];
      hist[b * e + x] = total;
      total += c;
    }
    counts[x] = total;
    base[x] = total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t running = 0;
    for (int x = 0; x < e; ++x) {
      const int64_t c = base[x];
      base[x] = running;
      running += c;
    }
  }
  __syncthreads();
  for (int x = threadIdx.x; x < e; x += blockDim.x)
    for (int64_t b = 0; b < chunks; ++b) hist[b * e + x] += base[x];
}

// Pass 3: each slot's row = its (chunk, expert) start + earlier slots of that expert in the chunk.
__global__ void scatter_positions(const int64_t* __restrict__ index, int64_t n_slots, int e, int k,
                                  const int64_t* __restrict__ start, int64_t* __restrict__ slot,
                                  int64_t* __restrict__ source_row,
                                  int64_t* __restrict__ row_of_slot) {
  __shared__ int experts[kChunk];
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  // Range-checked before narrowing: an index outside [0, e) (chunk_histogram failed its check on
  // it) takes no row.
  const int64_t raw = s < n_slots ? index[s] : -1;
  const int x = raw >= 0 && raw < e ? static_cast<int>(raw) : -1;
  experts[threadIdx.x] = x;
  __syncthreads();
  if (s >= n_slots || x < 0) return;
  int rank = 0;
  for (int j = 0; j < static_cast<int>(threadIdx.x); ++j) rank += experts[j] == x;
  const int64_t row = start[blockIdx.x * static_cast<int64_t>(e) + x] + rank;
  slot[row] = s;
  source_row[row] = s / k;
  row_of_slot[s] = row;
}

// out[i] = x[rows[i]], moving V-sized units (16-byte vectors when the rows allow it).
template <typename V>
__global__ void gather_kernel(const V* __restrict__ x, int64_t units,
                              const int64_t* __restrict__ rows, int64_t m, V* __restrict__ out) {
  const int64_t total = m * units;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / units, u = i - r * units;
    out[i] = x[rows[r] * units + u];
  }
}

// out[t] = sum_j w_j * y[row_of_slot[t*k + j]] with w = weight or 1 (the backward of permute).
template <typename T>
__global__ void combine_kernel(const T* __restrict__ y, int64_t hidden,
                               const float* __restrict__ weight,
                               const int64_t* __restrict__ row_of_slot, int64_t n, int k,
                               T* __restrict__ out) {
  const int64_t total = n * hidden;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / hidden, c = i - t * hidden;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
      const int64_t row = row_of_slot[t * k + j];
      if (row < 0) continue;  // dropped over capacity
      acc += (weight ? weight[t * k + j] : 1.0f) * to_float(y[row * hidden + c]);
    }
    from_float(acc, out + i);
  }
}

// The k-way (weighted) combine with 16-byte loads and stores: one block per token, each thread
// owns 16 bytes of the row. weight == nullptr sums (the backward of permute).
template <typename T>
__global__ void combine_vec_kernel(const T* __restrict__ y, int64_t hidden,
                                   const float* __restrict__ weight,
                                   const int64_t* __restrict__ row_of_slot, int64_t n, int k,
                                   T* __restrict__ out) {
  constexpr int kPerVec = 16 / sizeof(T);
  union Vec {
    uint4 raw;
    T v[kPerVec];
  };
  const int64_t vecs = hidden / kPerVec;
  for (int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    for (int64_t c = threadIdx.x; c < vecs; c += blockDim.x) {
      float acc[kPerVec];
#pragma unroll
      for (int i = 0; i < kPerVec; ++i) acc[i] = 0.0f;
      for (int j = 0; j < k; ++j) {
        const int64_t row = row_of_slot[t * k + j];
        if (row < 0) continue;  // dropped over capacity
        const float w = weight ? weight[t * k + j] : 1.0f;
        Vec in;
        in.raw = reinterpret_cast<const uint4*>(y + row * hidden)[c];
#pragma unroll
        for (int i = 0; i < kPerVec; ++i) acc[i] += w * to_float(in.v[i]);
      }
      Vec o;
#pragma unroll
      for (int i = 0; i < kPerVec; ++i) from_float(acc[i], &o.v[i]);
      reinterpret_cast<uint4*>(out + t * hidden)[c] = o.raw;
    }
  }
}

// Whether rows of `hidden` elements of `bytes` each can move as aligned 16-byte vectors.
bool vectorizable(int64_t hidden, size_t bytes, const void* a, const void* b) {
  return (hidden * static_cast<int64_t>(bytes)) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

// One block per permuted row: scaled copy of the token's gradient and the weight's gradient.
template <typename T>
__global__ void unpermute_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ y,
                                          int64_t hidden, const float* __restrict__ weight,
                                          const int64_t* __restrict__ source_row,
                                          const int64_t* __restrict__ slot, int64_t m,
                                          T* __restrict__ grad_y, float* __restrict__ grad_weight) {
  __shared__ float partial[kThreads];
  for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
    const T* go = grad_out + source_row[i] * hidden;
    const T* yi = y + i * hidden;
    const float w = weight[slot[i]];
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) {
      const float g = to_float(go[c]);
      from_float(w * g, grad_y + i * hidden + c);
      dot += g * to_float(yi[c]);
    }
    partial[threadIdx.x] = dot;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (static_cast<int>(threadIdx.x) < stride)
        partial[threadIdx.x] += partial[threadIdx.x + stride];
      __syncthreads();
    }
    if (threadIdx.x == 0) grad_weight[slot[i]] = partial[0];
    __syncthreads();
  }
}

template <typename F>
int dispatch(DType dtype, F&& f) {
  if (dtype == DType::BF16) return f(static_cast<bf16*>(nullptr));
  return f(static_cast<float*>(nullptr));
}

size_t element_size(DType d) {
  return d == DType::BF16 ? 2 : 4;
}

}  // namespace

size_t permute_workspace_bytes(int64_t n_slots, int e) {
  return static_cast<size_t>(num_chunks(n_slots)) * static_cast<size_t>(e) * sizeof(int64_t);
}

int permute_map(const int64_t* index, int64_t n_slots, int e, int k, void* workspace, int64_t* slot,
                int64_t* source_row, int64_t* row_of_slot, int64_t* counts, Stream stream) {
  cudaStream_t s = as_stream(stream);
  if (n_slots == 0) return static_cast<int>(cudaMemsetAsync(counts, 0, sizeof(int64_t) * e, s));
  const int64_t chunks = num_chunks(n_slots);
  auto* hist = static_cast<int64_t*>(workspace);
  chunk_histogram<<<static_cast<unsigned>(chunks), kChunk, sizeof(int) * e, s>>>(index, n_slots, e,
                                                                                 hist);
  chunk_offsets<<<1, 1024, 0, s>>>(chunks, e, hist, counts);
  scatter_positions<<<static_cast<unsigned>(chunks), kChunk, 0, s>>>(index, n_slots, e, k, hist,
                                                                     slot, source_row, row_of_slot);
  return last_error();
}

int gather_rows(const void* x, DType dtype, int64_t hidden, const int64_t* rows, int64_t m,
                void* out, Stream stream) {
  if (m == 0 || hidden == 0) return 0;
  cudaStream_t s = as_stream(stream);
  const int64_t bytes = hidden * static_cast<int64_t>(element_size(dtype));
  const bool vec16 = bytes % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (vec16) {
    const int64_t units = bytes / 16;
    gather_kernel<<<blocks_for(m * units, kThreads), kThreads, 0, s>>>(
        static_cast<const uint4*>(x), units, rows, m, static_cast<uint4*>(out));
  } else {
    const int64_t units = bytes / 2;
    gather_kernel<<<blocks_for(m * units, kThreads), kThreads, 0, s>>>(
        static_cast<const uint16_t*>(x), units, rows, m, static_cast<uint16_t*>(out));
  }
  return last_error();
}

int sum_slot_rows(const void* grad_permuted, DType dtype, int64_t hidden,
                  const int64_t* row_of_slot, int64_t n, int k, void* grad_x, Stream stream) {
  if (n == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (vectorizable(hidden, sizeof(T), grad_permuted, grad_x)) {
      combine_vec_kernel<<<static_cast<unsigned>(n < 65535 ? n : 65535), kThreads, 0,
                           as_stream(stream)>>>(static_cast<const T*>(grad_permuted), hidden,
                                                nullptr, row_of_slot, n, k,
                                                static_cast<T*>(grad_x));
      return last_error();
    }
    combine_kernel<<<blocks_for(n * hidden, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(grad_permuted), hidden, nullptr, row_of_slot, n, k,
        static_cast<T*>(grad_x));
    return last_error();
  });
}

int unpermute_forward(const void* y, DType dtype, int64_t hidden, const float* weight,
                      const int64_t* row_of_slot, int64_t n, int k, void* out, Stream stream) {
  if (n == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (vectorizable(hidden, sizeof(T), y, out)) {
      combine_vec_kernel<<<static_cast<unsigned>(n < 65535 ? n : 65535), kThreads, 0,
                           as_stream(stream)>>>(static_cast<const T*>(y), hidden, weight,
                                                row_of_slot, n, k, static_cast<T*>(out));
      return last_error();
    }
    combine_kernel<<<blocks_for(n * hidden, kThreads), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(y), hidden, weight, row_of_slot, n, k, static_cast<T*>(out));
    return last_error();
  });
}

int unpermute_backward(const void* grad_out, const void* y, DType dtype, int64_t hidden,
                       const float* weight, const int64_t* source_row, const int64_t* slot,
                       int64_t m, void* grad_y, float* grad_weight, Stream stream) {
  if (m == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const unsigned blocks = static_cast<unsigned>(m < 65535 ? m : 65535);
    unpermute_backward_kernel<<<blocks, kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(y), hidden, weight, source_row, slot,
        m, static_cast<T*>(grad_y), grad_weight);
    return last_error();
  });
}

}  // namespace hetmoe::gpu
