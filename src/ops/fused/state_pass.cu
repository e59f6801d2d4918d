// CUDA kernels of the fused state pass (dla/ops/fused.h): one thread block per (batch·head, 32 value
// columns) carries its [K, 32] slice of the state through all chunks in shared memory, so the sequential
// part of the chunkwise form is one launch per direction instead of several per chunk.
// Each block computes two kinds of products, both as out[r][c] (+)= sum_j a[j][r] · b[j][c] with a and b in
// shared memory: [C, 32] tiles (what the chunk writes, or its gradient) and [K, 32] tiles (the state, or its
// gradient). Two variants: the exact one runs them as float32 FMAs, a thread owning a 4 × 4 or 8 × 4 block of
// the output and reading a and b as float4; the TF32 one (namespace tensor_core, for callers that allow TF32)
// runs them on tensor cores.
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "../async_copy.cuh"
#include "../cuda_launch.cuh"
#include "../tf32_fragments.cuh"
#include "../wmma_shared.cuh"
#include "kernels.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error \
    "dla's state-pass kernels use TF32 tensor cores and cp.async: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::ops::fused::kernels {
namespace {

using dla::ops::kernels::copy_async;
using dla::ops::kernels::launched;
using dla::ops::kernels::max_shared_bytes;

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

// The TF32 variant: the same recurrences with the products on tensor cores (WMMA m16n16k8, TF32 operands,
// float32 accumulators, as in src/memory/slot_pass.cu). The state stays float32 in shared memory and its
// decay update is float32; only the products' operands are rounded to TF32. Each warp owns strips of
// several 16 × 16 tiles of an output, so that a fragment loaded from shared memory feeds several products.
// The chunk's [C, K] operands and the [C, kTileV] tiles that come with them pass through two shared slots:
// while the warps multiply from one, cp.async fills the other with the next phase's operands, so the loads
// overlap the products. A block takes 64 value columns with 8 warps (B·H = 64..128 heads of V = 128 give
// 128..256 blocks, one per SM): on an H200 that measured faster than 32 columns with 4 warps, two per SM.
namespace tensor_core {

using namespace nvcuda;
using dla::ops::kernels::load_shared;
using dla::ops::kernels::round_to_tf32;
using dla::ops::kernels::store_shared;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileV = 64;  // value columns per block
constexpr int kTile = 16;   // WMMA tile edge
constexpr int kStep = 8;    // WMMA depth of one TF32 product
constexpr int kPad = 4;     // shared rows are padded by 4 floats: float4 alignment, fewer bank conflicts

using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, kStep, float>;
template <class Layout>
using OperandA = wmma::fragment<wmma::matrix_a, kTile, kTile, kStep, wmma::precision::tf32, Layout>;
using OperandB = wmma::fragment<wmma::matrix_b, kTile, kTile, kStep, wmma::precision::tf32, wmma::row_major>;

/// A warp's part of an output: Rows × Columns tiles.
template <int Rows, int Columns>
struct Strip {
  static constexpr int kHeight = kTile * Rows, kWidth = kTile * Columns;
  Accumulator tiles[Rows][Columns];
};
// The [C, kTileV] outputs (v_new, dv_new) and the [K, kTileV] ones (the state updates).
using WrittenStrip = Strip<1, 2>;
using StateStrip = Strip<2, 2>;
static_assert(kTileV % WrittenStrip::kWidth == 0 && kTileV % StateStrip::kWidth == 0);

/// Shared-memory layout in floats: two slots, each a [C, K] operand and a [C, kTileV] tile, then the
/// [K, kTileV] state (or its gradient) and the [C, kTileV] values the chunk writes (or their gradient). C a
/// multiple of 16, K of 32 and the padded row lengths multiples of 4 keep every WMMA tile 32-byte aligned.
struct Layout {
  int chunks, chunk_size, key_dim, value_dim;

  __host__ __device__ int operand_ld() const { return key_dim + kPad; }
  __host__ __device__ int tile_ld() const { return kTileV + kPad; }
  __host__ __device__ int slot_floats() const { return chunk_size * (operand_ld() + tile_ld()); }
  __host__ __device__ int operand(int slot) const { return slot * slot_floats(); }
  __host__ __device__ int tile(int slot) const { return operand(slot) + chunk_size * operand_ld(); }
  __host__ __device__ int state() const { return 2 * slot_floats(); }
  __host__ __device__ int written() const { return state() + key_dim * tile_ld(); }
  __host__ __device__ int total() const { return written() + chunk_size * tile_ld(); }
};

size_t shared_bytes(const Layout& l) {
  return sizeof(float) * static_cast<size_t>(l.total());
}

// ---- products on tensor cores ----

/// strip += A B over `depth` (a multiple of 16): A strip-high × depth, B depth × strip-wide row-major with
/// rows b_ld apart. Row-major A is A(i, j) = a[i·a_ld + j]; column-major A is A(i, j) = a[i + j·a_ld]. Two
/// steps per iteration, so that the next step's fragments load while the tensor cores work.
template <class ALayout, int Rows, int Columns>
__device__ void multiply_accumulate(Strip<Rows, Columns>& strip, const float* a, int a_ld, const float* b,
                                    int b_ld, int depth) {
  constexpr bool kRowMajor = std::is_same_v<ALayout, wmma::row_major>;
  for (int first = 0; first < depth; first += 2 * kStep) {
#pragma unroll
    for (int j = first; j < first + 2 * kStep; j += kStep) {
      OperandA<ALayout> a_fragments[Rows];
      OperandB b_fragments[Columns];
#pragma unroll
      for (int r = 0; r < Rows; ++r) {
        const int row = r * kTile;
        load_shared(a_fragments[r], kRowMajor ? a + row * a_ld + j : a + row + j * a_ld, a_ld);
        round_to_tf32(a_fragments[r]);
      }
#pragma unroll
      for (int c = 0; c < Columns; ++c) {
        load_shared(b_fragments[c], b + j * b_ld + c * kTile, b_ld);
        round_to_tf32(b_fragments[c]);
      }
#pragma unroll
      for (int r = 0; r < Rows; ++r) {
#pragma unroll
        for (int c = 0; c < Columns; ++c)
          wmma::mma_sync(strip.tiles[r][c], a_fragments[r], b_fragments[c], strip.tiles[r][c]);
      }
    }
  }
}

/// strip = scale · the strip at src (rows ld apart).
template <int Rows, int Columns>
__device__ void load_strip(Strip<Rows, Columns>& strip, const float* src, int ld, float scale) {
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
#pragma unroll
    for (int c = 0; c < Columns; ++c) {
      Accumulator& tile = strip.tiles[r][c];
      load_shared(tile, src + r * kTile * ld + c * kTile, ld);
#pragma unroll
      for (int t = 0; t < tile.num_elements; ++t)
        tile.x[t] *= scale;
    }
  }
}

/// The strip at dst (rows ld apart) = scale · strip.
template <int Rows, int Columns>
__device__ void store_strip(float* dst, int ld, Strip<Rows, Columns>& strip, float scale) {
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
#pragma unroll
    for (int c = 0; c < Columns; ++c) {
      Accumulator& tile = strip.tiles[r][c];
#pragma unroll
      for (int t = 0; t < tile.num_elements; ++t)
        tile.x[t] *= scale;
      store_shared(dst + r * kTile * ld + c * kTile, tile, ld);
    }
  }
}

/// Calls job(row, column) for each strip of a [rows, kTileV] output that this warp owns.
template <class S, class Job>
__device__ void for_each_strip(int rows, Job job) {
  constexpr int kAcross = kTileV / S::kWidth;
  const int strips = rows / S::kHeight * kAcross;
  for (int s = static_cast<int>(threadIdx.x / 32); s < strips; s += kWarps)
    job((s / kAcross) * S::kHeight, (s % kAcross) * S::kWidth);
}

// ---- copies between global and shared memory ----

/// Waits for this thread's copies, then for the block's, so that every copied value is visible and every
/// buffer read before is free.
__device__ void finish_copies() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  __syncthreads();
}

/// Starts dst (rows dst_ld apart) = a [rows, cols] row-major global block, cols a multiple of 4. Every
/// thread starts its copies before any lands, so all of them are in flight at once. A thread's vectors are
/// kThreads apart, so its row and column advance by fixed steps instead of a division per copy.
__device__ void copy_rows(float* dst, int dst_ld, const float* __restrict__ src, int rows, int cols) {
  const int per_row = cols / 4, row_step = kThreads / per_row, column_step = kThreads % per_row;
  int row = threadIdx.x / per_row, column = threadIdx.x % per_row;
  while (row < rows) {
    copy_async(dst + row * dst_ld + 4 * column, src + static_cast<size_t>(row) * cols + 4 * column, true);
    row += row_step;
    column += column_step;
    if (column >= per_row) {
      column -= per_row;
      ++row;
    }
  }
}

/// Starts dst (rows dst_ld apart) = the kTileV columns from first_column of a [rows, value_dim] global
/// matrix, zeros past its end.
__device__ void copy_columns(float* dst, int dst_ld, const float* __restrict__ src, int rows, int value_dim,
                             int first_column) {
  constexpr int kPerRow = kTileV / 4;
  for (int i = threadIdx.x; i < rows * kPerRow; i += kThreads) {
    const int row = i / kPerRow, column = first_column + 4 * (i % kPerRow);
    const float* row_start = src + static_cast<size_t>(row) * value_dim;
    const bool inside = column < value_dim;
    copy_async(dst + row * dst_ld + 4 * (i % kPerRow), inside ? row_start + column : row_start, inside);
  }
}

/// Columns [first_column, first_column + width) of rows [0, rows) of a [*, value_dim] global matrix = src
/// (rows src_ld apart), the columns from value_dim on left out; thread `index` of `count` takes its share.
__device__ void store_columns(float* dst, int value_dim, int first_column, int width, const float* src,
                              int src_ld, int rows, int index, int count) {
  const int per_row = width / 4;
  for (int i = index; i < rows * per_row; i += count) {
    const int row = i / per_row, offset = 4 * (i % per_row);
    if (first_column + offset < value_dim) {
      *reinterpret_cast<float4*>(dst + static_cast<size_t>(row) * value_dim + first_column + offset) =
          *reinterpret_cast<const float4*>(src + row * src_ld + offset);
    }
  }
}

/// A warp's strip at (row, column) of the block's tile (src, rows ld apart) to the global [*, value_dim]
/// matrix dst, whose tile starts at first_column.
template <class S>
__device__ void store_strip_to_global(float* dst, int value_dim, int first_column, const float* src, int ld,
                                      int row, int column) {
  store_columns(dst + static_cast<size_t>(row) * value_dim, value_dim, first_column + column, S::kWidth,
                src + row * ld + column, ld, S::kHeight, static_cast<int>(threadIdx.x % 32), 32);
}

/// What both kernels work out first: the dims, the block's place and the per-chunk strides.
struct BlockFrame {
  int C, K, V, ld, operand_ld, first_column;
  size_t head, KV, CK, CV;
};

__device__ BlockFrame block_frame(const Layout& l) {
  const int C = l.chunk_size, K = l.key_dim, V = l.value_dim;
  return {C,
          K,
          V,
          l.tile_ld(),
          l.operand_ld(),
          static_cast<int>(blockIdx.x * kTileV),
          blockIdx.y,
          static_cast<size_t>(K) * V,
          static_cast<size_t>(C) * K,
          static_cast<size_t>(C) * V};
}

__global__ void __launch_bounds__(kThreads)
    state_pass_forward_kernel(const float* __restrict__ k_to_end, const float* __restrict__ u,
                              const float* __restrict__ w, const float* __restrict__ chunk_decay,
                              const float* __restrict__ initial_state, float* __restrict__ states,
                              float* __restrict__ v_new, float* __restrict__ final_state, Layout l) {
  extern __shared__ __align__(128) float shared[];
  float* state = shared + l.state();      // S
  float* written = shared + l.written();  // v_new
  const auto [C, K, V, ld, operand_ld, first_column, head, KV, CK, CV] = block_frame(l);
  const bool delta_rule = w != nullptr;

  // A chunk's first phase reads w (or k_to_end without the delta rule) and u.
  const auto fetch_chunk = [&](int slot, size_t chunk) {
    copy_rows(shared + l.operand(slot), operand_ld, (delta_rule ? w : k_to_end) + chunk * CK, C, K);
    copy_columns(shared + l.tile(slot), ld, u + chunk * CV, C, V, first_column);
  };
  copy_columns(state, ld, initial_state + head * KV, K, V, first_column);
  fetch_chunk(0, head * l.chunks);
  finish_copies();
  int slot = 0;
  for (int m = 0; m < l.chunks; ++m) {
    const size_t chunk = head * l.chunks + m;
    const float decay = __ldg(chunk_decay + chunk);
    const float* values = delta_rule ? written : shared + l.tile(slot);
    if (delta_rule) {
      // v_new = u − w S, as −(−u + w S) so that w is multiplied as it was loaded.
      copy_rows(shared + l.operand(1 - slot), operand_ld, k_to_end + chunk * CK, C, K);
      const float* u_tile = shared + l.tile(slot);
      const float* w_chunk = shared + l.operand(slot);
      for_each_strip<WrittenStrip>(C, [&](int row, int column) {
        WrittenStrip strip;
        load_strip(strip, u_tile + row * ld + column, ld, -1.f);
        multiply_accumulate<wmma::row_major>(strip, w_chunk + row * operand_ld, operand_ld, state + column,
                                             ld, K);
        store_strip(written + row * ld + column, ld, strip, -1.f);
        __syncwarp();  // the strip's lanes read back what the others stored
        store_strip_to_global<WrittenStrip>(v_new + chunk * CV, V, first_column, written, ld, row, column);
      });
      finish_copies();
      slot = 1 - slot;
    }
    // S_{m+1} = decay S_m + k_to_endᵀ v_new, each warp recording its strips as S_m before updating them.
    if (m + 1 < l.chunks) fetch_chunk(1 - slot, chunk + 1);
    const float* k_chunk = shared + l.operand(slot);
    for_each_strip<StateStrip>(K, [&](int row, int column) {
      store_strip_to_global<StateStrip>(states + chunk * KV, V, first_column, state, ld, row, column);
      StateStrip strip;
      load_strip(strip, state + row * ld + column, ld, decay);
      multiply_accumulate<wmma::col_major>(strip, k_chunk + row, operand_ld, values + column, ld, C);
      __syncwarp();  // every lane has read S_m before the strip is overwritten
      store_strip(state + row * ld + column, ld, strip, 1.f);
    });
    finish_copies();
    slot = 1 - slot;
  }
  store_columns(final_state + head * KV, V, first_column, kTileV, state, ld, K, threadIdx.x, kThreads);
}

__global__ void __launch_bounds__(kThreads)
    state_pass_backward_kernel(const float* __restrict__ q_read, const float* __restrict__ d_out,
                               const float* __restrict__ d_v_new_intra, const float* __restrict__ k_to_end,
                               const float* __restrict__ w, const float* __restrict__ chunk_decay,
                               const float* __restrict__ d_final_state, float* __restrict__ d_states_next,
                               float* __restrict__ d_v_new, float* __restrict__ d_initial_state, Layout l) {
  extern __shared__ __align__(128) float shared[];
  float* d_state = shared + l.state();      // dS
  float* d_written = shared + l.written();  // dv_new
  const auto [C, K, V, ld, operand_ld, first_column, head, KV, CK, CV] = block_frame(l);
  const bool delta_rule = w != nullptr;

  // Each phase's operand, with its [C, kTileV] tile when it has one.
  const auto fetch = [&](int slot, const float* operand, const float* tile) {
    copy_rows(shared + l.operand(slot), operand_ld, operand, C, K);
    if (tile != nullptr) copy_columns(shared + l.tile(slot), ld, tile, C, V, first_column);
  };
  const auto fetch_chunk = [&](int slot, size_t chunk) {
    fetch(slot, k_to_end + chunk * CK, d_v_new_intra + chunk * CV);
  };
  copy_columns(d_state, ld, d_final_state + head * KV, K, V, first_column);
  fetch_chunk(0, head * l.chunks + l.chunks - 1);
  finish_copies();
  int slot = 0;
  for (int m = l.chunks - 1; m >= 0; --m) {
    const size_t chunk = head * l.chunks + m;
    const float decay = __ldg(chunk_decay + chunk);

    // dv_new = d_v_new_intra + k_to_end dS_{m+1}
    fetch(1 - slot, q_read + chunk * CK, d_out + chunk * CV);
    const float* k_chunk = shared + l.operand(slot);
    const float* d_intra = shared + l.tile(slot);
    for_each_strip<WrittenStrip>(C, [&](int row, int column) {
      WrittenStrip strip;
      load_strip(strip, d_intra + row * ld + column, ld, 1.f);
      multiply_accumulate<wmma::row_major>(strip, k_chunk + row * operand_ld, operand_ld, d_state + column,
                                           ld, K);
      store_strip(d_written + row * ld + column, ld, strip, 1.f);
      __syncwarp();  // the strip's lanes read back what the others stored
      store_strip_to_global<WrittenStrip>(d_v_new + chunk * CV, V, first_column, d_written, ld, row, column);
    });
    finish_copies();
    slot = 1 - slot;

    // dS_m = decay dS_{m+1} + q_readᵀ d_out, each warp recording its strips as dS_{m+1} before updating them.
    if (delta_rule)
      fetch(1 - slot, w + chunk * CK, nullptr);
    else if (m > 0)
      fetch_chunk(1 - slot, chunk - 1);
    const float* q_chunk = shared + l.operand(slot);
    const float* d_read = shared + l.tile(slot);
    for_each_strip<StateStrip>(K, [&](int row, int column) {
      store_strip_to_global<StateStrip>(d_states_next + chunk * KV, V, first_column, d_state, ld, row,
                                        column);
      StateStrip strip;
      load_strip(strip, d_state + row * ld + column, ld, decay);
      multiply_accumulate<wmma::col_major>(strip, q_chunk + row, operand_ld, d_read + column, ld, C);
      __syncwarp();  // every lane has read dS_{m+1} before the strip is overwritten
      store_strip(d_state + row * ld + column, ld, strip, 1.f);
    });
    finish_copies();
    slot = 1 - slot;
    if (!delta_rule) continue;

    // dS_m −= wᵀ dv_new, as −(−dS_m + wᵀ dv_new) so that w is multiplied as it was loaded.
    if (m > 0) fetch_chunk(1 - slot, chunk - 1);
    const float* w_chunk = shared + l.operand(slot);
    for_each_strip<StateStrip>(K, [&](int row, int column) {
      StateStrip strip;
      load_strip(strip, d_state + row * ld + column, ld, -1.f);
      multiply_accumulate<wmma::col_major>(strip, w_chunk + row, operand_ld, d_written + column, ld, C);
      store_strip(d_state + row * ld + column, ld, strip, -1.f);
    });
    finish_copies();
    slot = 1 - slot;
  }
  store_columns(d_initial_state + head * KV, V, first_column, kTileV, d_state, ld, K, threadIdx.x, kThreads);
}

Layout layout_of(const StatePassDims& dims) {
  return {static_cast<int>(dims.chunks), static_cast<int>(dims.chunk_size), static_cast<int>(dims.key_dim),
          static_cast<int>(dims.value_dim)};
}

/// Whether the TF32 kernels run dims that the exact ones run: at least one chunk (they fetch the first
/// before the loop), C and K whole numbers of strips (multiples of 16 and 32), and their shared memory within
/// the device's limit.
bool supports(const StatePassDims& dims) {
  return dims.chunks >= 1 && dims.chunk_size % WrittenStrip::kHeight == 0 &&
         dims.key_dim % StateStrip::kHeight == 0 &&
         shared_bytes(layout_of(dims)) <= static_cast<size_t>(max_shared_bytes());
}

template <class Kernel, class... Args>
const char* launch(Kernel kernel, const StatePassDims& dims, void* stream, Args... args) {
  const Layout l = layout_of(dims);
  const size_t bytes = shared_bytes(l);
  if (const char* error = prepare(kernel, bytes)) return error;
  const dim3 grid(static_cast<unsigned>((dims.value_dim + kTileV - 1) / kTileV),
                  static_cast<unsigned>(dims.batch_heads));
  kernel<<<grid, kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(args..., l);
  return launched();
}

}  // namespace tensor_core

}  // namespace

bool supports(const StatePassDims& dims) {
  constexpr int64_t kMaxInt = 1 << 30;
  if (dims.chunk_size % 4 != 0 || dims.key_dim % 8 != 0 || dims.value_dim % 4 != 0 || dims.chunk_size <= 0 ||
      dims.key_dim <= 0)
    return false;
  if (dims.batch_heads <= 0 || dims.batch_heads > 65535 || dims.chunks > kMaxInt || dims.value_dim > kMaxInt)
    return false;
  const Dims d = device_dims(dims);
  return std::max(forward_shared_bytes(d), backward_shared_bytes(d)) <=
         static_cast<size_t>(max_shared_bytes());
}

const char* state_pass_forward(const float* k_to_end, const float* u, const float* w,
                               const float* chunk_decay, const float* initial_state, float* states,
                               float* v_new, float* final_state, const StatePassDims& dims, bool tf32,
                               void* stream) {
  if (tf32 && tensor_core::supports(dims)) {
    return tensor_core::launch(tensor_core::state_pass_forward_kernel, dims, stream, k_to_end, u, w,
                               chunk_decay, initial_state, states, v_new, final_state);
  }
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
                                float* d_initial_state, const StatePassDims& dims, bool tf32, void* stream) {
  if (tf32 && tensor_core::supports(dims)) {
    return tensor_core::launch(tensor_core::state_pass_backward_kernel, dims, stream, q_read, d_out,
                               d_v_new_intra, k_to_end, w, chunk_decay, d_final_state, d_states_next, d_v_new,
                               d_initial_state);
  }
  const Dims d = device_dims(dims);
  const size_t shared_bytes = backward_shared_bytes(d);
  if (const char* error = prepare(state_pass_backward_kernel, shared_bytes)) return error;
  state_pass_backward_kernel<<<grid_of(dims), kThreads, shared_bytes, static_cast<cudaStream_t>(stream)>>>(
      q_read, d_out, d_v_new_intra, k_to_end, w, chunk_decay, d_final_state, d_states_next, d_v_new,
      d_initial_state, d);
  return launched();
}

}  // namespace dla::ops::fused::kernels
