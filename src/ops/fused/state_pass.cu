// CUDA kernels of the fused state pass (dla/ops/fused.h): one thread block per (batch·head, 32 value
// columns) carries its [K, 32] slice of the state through all chunks in shared memory, so the sequential
// part of the chunkwise form is one launch per direction instead of several per chunk.
// Each block computes two kinds of products, both as out[r][c] (+)= sum_j a[j][r] · b[j][c] with a and b in
// shared memory: [C, 32] tiles (what the chunk writes, or its gradient) and [K, 32] tiles (the state, or its
// gradient). A thread owns a 4 × 4 or 8 × 4 block of the output and reads a and b as float4.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels.h"

namespace dla::ops::fused::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kTileV = 32;                            // value columns per block
constexpr int kColumnGroups = kTileV / 4;             // threads across a tile's columns, 4 columns each
constexpr int kRowGroups = kThreads / kColumnGroups;  // threads down a tile's rows

struct Dims {
  int chunks, chunk_size, key_dim, value_dim;
  // Shared-memory row length of a transposed [C, K] operand: padded to keep float4 alignment and spread
  // banks.
  __host__ __device__ int transposed_stride() const { return chunk_size + 4; }
  __host__ __device__ int operand_floats() const {
    return key_dim * transposed_stride() > chunk_size * key_dim ? key_dim * transposed_stride()
                                                                : chunk_size * key_dim;
  }
};

size_t forward_shared_bytes(const Dims& d) {
  return sizeof(float) * (d.operand_floats() + d.key_dim * kTileV + d.chunk_size * kTileV);
}
size_t backward_shared_bytes(const Dims& d) {
  return sizeof(float) * (d.operand_floats() + d.key_dim * kTileV + 2 * d.chunk_size * kTileV);
}

// The copies between global and shared memory move float4s and keep kInFlight of them per thread in flight:
// a chunk's operands are tens of kilobytes, and one load at a time per thread would leave the block waiting
// on memory latency for most of each chunk.
constexpr int kInFlight = 8;

// n floats, n a multiple of 4, both pointers 16-byte aligned.
__device__ void load(float* dst, const float* __restrict__ src, int n) {
  const float4* src4 = reinterpret_cast<const float4*>(src);
  float4* dst4 = reinterpret_cast<float4*>(dst);
  const int n4 = n / 4;
  for (int base = threadIdx.x; base < n4; base += kThreads * kInFlight) {
    float4 values[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * kThreads < n4) values[u] = __ldg(src4 + base + u * kThreads);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * kThreads < n4) dst4[base + u * kThreads] = values[u];
    }
  }
}

// src is [rows, cols] row-major in global memory (cols a multiple of 4); dst gets it transposed, rows
// `stride` floats apart.
__device__ void load_transposed(float* dst, int stride, const float* __restrict__ src, int rows, int cols) {
  const float4* src4 = reinterpret_cast<const float4*>(src);
  const int n4 = rows * cols / 4;
  for (int base = threadIdx.x; base < n4; base += kThreads * kInFlight) {
    float4 values[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * kThreads < n4) values[u] = __ldg(src4 + base + u * kThreads);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int first = 4 * (base + u * kThreads);
      if (first >= rows * cols) continue;
      const int row = first / cols, col = first % cols;
      dst[col * stride + row] = values[u].x;
      dst[(col + 1) * stride + row] = values[u].y;
      dst[(col + 2) * stride + row] = values[u].z;
      dst[(col + 3) * stride + row] = values[u].w;
    }
  }
}

// The [rows, kTileV] tile at column `first_column` of a [rows, value_dim] global matrix (value_dim a
// multiple of 4); zeros past the end.
__device__ void load_tile(float* dst, const float* __restrict__ src, int rows, int value_dim,
                          int first_column) {
  constexpr int kVectorsPerRow = kTileV / 4;
  const int n4 = rows * kVectorsPerRow;
  float4* dst4 = reinterpret_cast<float4*>(dst);
  for (int base = threadIdx.x; base < n4; base += kThreads * kInFlight) {
    float4 values[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int i = base + u * kThreads;
      const int column = first_column + (i % kVectorsPerRow) * 4;
      values[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (i < n4 && column < value_dim)
        values[u] = __ldg(reinterpret_cast<const float4*>(
            src + static_cast<size_t>(i / kVectorsPerRow) * value_dim + column));
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * kThreads < n4) dst4[base + u * kThreads] = values[u];
    }
  }
}

__device__ void store_tile(float* dst, const float* src, int rows, int value_dim, int first_column) {
  constexpr int kVectorsPerRow = kTileV / 4;
  const float4* src4 = reinterpret_cast<const float4*>(src);
  for (int i = threadIdx.x; i < rows * kVectorsPerRow; i += kThreads) {
    const int column = first_column + (i % kVectorsPerRow) * 4;
    if (column < value_dim)
      *reinterpret_cast<float4*>(dst + static_cast<size_t>(i / kVectorsPerRow) * value_dim + column) =
          src4[i];
  }
}

// acc[r][c] += sum_{j < depth} a[j][row + r] · b[j][column + c]; a rows are a_stride floats apart, b is
// [depth, kTileV].
template <int Rows>
__device__ void accumulate(float (&acc)[Rows][4], const float* a, int a_stride, const float* b, int depth,
                           int row, int column) {
#pragma unroll 4
  for (int j = 0; j < depth; ++j) {
    float a_values[Rows];
#pragma unroll
    for (int r = 0; r < Rows; r += 4) {
      const float4 a4 = *reinterpret_cast<const float4*>(a + j * a_stride + row + r);
      a_values[r] = a4.x;
      a_values[r + 1] = a4.y;
      a_values[r + 2] = a4.z;
      a_values[r + 3] = a4.w;
    }
    const float4 b4 = *reinterpret_cast<const float4*>(b + j * kTileV + column);
    const float b_values[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
    for (int r = 0; r < Rows; ++r) {
#pragma unroll
      for (int c = 0; c < 4; ++c)
        acc[r][c] += a_values[r] * b_values[c];
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    state_pass_forward_kernel(const float* __restrict__ k_to_end, const float* __restrict__ u,
                              const float* __restrict__ w, const float* __restrict__ chunk_decay,
                              const float* __restrict__ initial_state, float* __restrict__ states,
                              float* __restrict__ v_new, float* __restrict__ final_state, Dims d) {
  extern __shared__ float4 shared4[];
  float* operand = reinterpret_cast<float*>(shared4);  // w transposed, then k_to_end
  float* state = operand + d.operand_floats();         // [K, kTileV]
  float* written = state + d.key_dim * kTileV;         // [C, kTileV]: v_new

  const int C = d.chunk_size, K = d.key_dim, V = d.value_dim;
  const size_t head = blockIdx.y;
  const int first_column = blockIdx.x * kTileV;
  const int column = (threadIdx.x % kColumnGroups) * 4;
  const int row_group = threadIdx.x / kColumnGroups;
  const size_t KV = static_cast<size_t>(K) * V, CK = static_cast<size_t>(C) * K,
               CV = static_cast<size_t>(C) * V;

  load_tile(state, initial_state + head * KV, K, V, first_column);
  for (int m = 0; m < d.chunks; ++m) {
    const size_t chunk = head * d.chunks + m;
    __syncthreads();  // the state is complete and the operand buffers are free
    store_tile(states + chunk * KV, state, K, V, first_column);
    load_tile(written, u + chunk * CV, C, V, first_column);
    if (w != nullptr) {
      load_transposed(operand, d.transposed_stride(), w + chunk * CK, C, K);
      __syncthreads();
      for (int row = row_group * 4; row < C; row += kRowGroups * 4) {
        float acc[4][4] = {};
        accumulate<4>(acc, operand, d.transposed_stride(), state, K, row, column);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
#pragma unroll
          for (int c = 0; c < 4; ++c)
            written[(row + r) * kTileV + column + c] -= acc[r][c];
        }
      }
      __syncthreads();
      store_tile(v_new + chunk * CV, written, C, V, first_column);
    }
    load(operand, k_to_end + chunk * CK, C * K);
    __syncthreads();
    const float decay = chunk_decay[chunk];
    for (int row = row_group * 8; row < K; row += kRowGroups * 8) {
      float acc[8][4] = {};
      accumulate<8>(acc, operand, K, written, C, row, column);
#pragma unroll
      for (int r = 0; r < 8; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          float& entry = state[(row + r) * kTileV + column + c];
          entry = decay * entry + acc[r][c];
        }
      }
    }
  }
  __syncthreads();
  store_tile(final_state + head * KV, state, K, V, first_column);
}

__global__ void __launch_bounds__(kThreads)
    state_pass_backward_kernel(const float* __restrict__ q_read, const float* __restrict__ d_out,
                               const float* __restrict__ d_v_new_intra, const float* __restrict__ k_to_end,
                               const float* __restrict__ w, const float* __restrict__ chunk_decay,
                               const float* __restrict__ d_final_state, float* __restrict__ d_states_next,
                               float* __restrict__ d_v_new, float* __restrict__ d_initial_state, Dims d) {
  extern __shared__ float4 shared4[];
  float* operand = reinterpret_cast<float*>(shared4);  // k_to_end transposed, then q_read, then w
  float* d_state = operand + d.operand_floats();       // [K, kTileV]
  float* d_written = d_state + d.key_dim * kTileV;     // [C, kTileV]: dv_new
  float* d_read = d_written + d.chunk_size * kTileV;   // [C, kTileV]: d_out

  const int C = d.chunk_size, K = d.key_dim, V = d.value_dim;
  const size_t head = blockIdx.y;
  const int first_column = blockIdx.x * kTileV;
  const int column = (threadIdx.x % kColumnGroups) * 4;
  const int row_group = threadIdx.x / kColumnGroups;
  const size_t KV = static_cast<size_t>(K) * V, CK = static_cast<size_t>(C) * K,
               CV = static_cast<size_t>(C) * V;

  load_tile(d_state, d_final_state + head * KV, K, V, first_column);
  for (int m = d.chunks - 1; m >= 0; --m) {
    const size_t chunk = head * d.chunks + m;
    __syncthreads();  // dS_{m+1} is complete and the operand buffers are free
    store_tile(d_states_next + chunk * KV, d_state, K, V, first_column);
    load_transposed(operand, d.transposed_stride(), k_to_end + chunk * CK, C, K);
    load_tile(d_written, d_v_new_intra + chunk * CV, C, V, first_column);
    load_tile(d_read, d_out + chunk * CV, C, V, first_column);
    __syncthreads();
    // dv_new = d_v_new_intra + k_to_end dS_{m+1}
    for (int row = row_group * 4; row < C; row += kRowGroups * 4) {
      float acc[4][4] = {};
      accumulate<4>(acc, operand, d.transposed_stride(), d_state, K, row, column);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c)
          d_written[(row + r) * kTileV + column + c] += acc[r][c];
      }
    }
    __syncthreads();
    store_tile(d_v_new + chunk * CV, d_written, C, V, first_column);
    load(operand, q_read + chunk * CK, C * K);
    __syncthreads();
    // dS_m = decay dS_{m+1} + q_readᵀ d_out, each thread on its own entries.
    const float decay = chunk_decay[chunk];
    for (int row = row_group * 8; row < K; row += kRowGroups * 8) {
      float acc[8][4] = {};
      accumulate<8>(acc, operand, K, d_read, C, row, column);
#pragma unroll
      for (int r = 0; r < 8; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          float& entry = d_state[(row + r) * kTileV + column + c];
          entry = decay * entry + acc[r][c];
        }
      }
    }
    if (w == nullptr) continue;
    __syncthreads();
    load(operand, w + chunk * CK, C * K);
    __syncthreads();
    // dS_m −= wᵀ dv_new
    for (int row = row_group * 8; row < K; row += kRowGroups * 8) {
      float acc[8][4] = {};
      accumulate<8>(acc, operand, K, d_written, C, row, column);
#pragma unroll
      for (int r = 0; r < 8; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c)
          d_state[(row + r) * kTileV + column + c] -= acc[r][c];
      }
    }
  }
  __syncthreads();
  store_tile(d_initial_state + head * KV, d_state, K, V, first_column);
}

Dims device_dims(const StatePassDims& dims) {
  return {static_cast<int>(dims.chunks), static_cast<int>(dims.chunk_size), static_cast<int>(dims.key_dim),
          static_cast<int>(dims.value_dim)};
}

dim3 grid_of(const StatePassDims& dims) {
  return dim3(static_cast<unsigned>((dims.value_dim + kTileV - 1) / kTileV),
              static_cast<unsigned>(dims.batch_heads));
}

template <class Kernel>
const char* prepare(Kernel kernel, size_t shared_bytes) {
  const cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(shared_bytes));
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

const char* launched() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace

bool supports(const StatePassDims& dims) {
  constexpr int64_t kMaxInt = 1 << 30;
  if (dims.chunk_size % 4 != 0 || dims.key_dim % 8 != 0 || dims.value_dim % 4 != 0 || dims.chunk_size <= 0 ||
      dims.key_dim <= 0)
    return false;
  if (dims.batch_heads <= 0 || dims.batch_heads > 65535 || dims.chunks > kMaxInt || dims.value_dim > kMaxInt)
    return false;
  int device = 0;
  int max_shared = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return false;
  const Dims d = device_dims(dims);
  return std::max(forward_shared_bytes(d), backward_shared_bytes(d)) <= static_cast<size_t>(max_shared);
}

const char* state_pass_forward(const float* k_to_end, const float* u, const float* w,
                               const float* chunk_decay, const float* initial_state, float* states,
                               float* v_new, float* final_state, const StatePassDims& dims, void* stream) {
  const Dims d = device_dims(dims);
  const size_t shared_bytes = forward_shared_bytes(d);
  if (const char* error = prepare(state_pass_forward_kernel, shared_bytes)) return error;
  state_pass_forward_kernel<<<grid_of(dims), kThreads, shared_bytes, static_cast<cudaStream_t>(stream)>>>(
      k_to_end, u, w, chunk_decay, initial_state, states, v_new, final_state, d);
  return launched();
}

const char* state_pass_backward(const float* q_read, const float* d_out, const float* d_v_new_intra,
                                const float* k_to_end, const float* w, const float* chunk_decay,
                                const float* d_final_state, float* d_states_next, float* d_v_new,
                                float* d_initial_state, const StatePassDims& dims, void* stream) {
  const Dims d = device_dims(dims);
  const size_t shared_bytes = backward_shared_bytes(d);
  if (const char* error = prepare(state_pass_backward_kernel, shared_bytes)) return error;
  state_pass_backward_kernel<<<grid_of(dims), kThreads, shared_bytes, static_cast<cudaStream_t>(stream)>>>(
      q_read, d_out, d_v_new_intra, k_to_end, w, chunk_decay, d_final_state, d_states_next, d_v_new,
      d_initial_state, d);
  return launched();
}

}  // namespace dla::ops::fused::kernels
