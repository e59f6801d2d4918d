// Device-side building blocks of the fused op's per-chunk kernels (chunk_stages.cu, chunk_gradients.cu):
// one thread block per (chunk, batch·head), of kThreads unless a kernel picks another `Threads`, moves chunk
// rows between global and shared memory with vector loads, and multiplies shared-memory tiles on TF32 tensor
// cores (WMMA m16n16k8, float32 accumulators). Operands are rounded to TF32 once, when they are written to
// shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "../cuda_launch.cuh"
#include "../wmma_shared.cuh"
#include "kernels.h"

namespace dla::ops::fused::kernels::tiles {

using namespace nvcuda;
using dla::ops::kernels::load_shared;
using dla::ops::kernels::store_shared;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // WMMA tile edge, and the block edge of the blocked inverse
constexpr int kStep = 8;   // WMMA depth of one TF32 product
// Shared rows are padded so that the WMMA fragment loads hit 32 distinct banks: rows read as A or as a
// column-major B by 4 floats (row length ≡ 4 mod 32), rows read as a row-major B by 8 (≡ 8 mod 32).
constexpr int kPad = 4;
constexpr int kRowMajorBPad = 8;
constexpr int kColumnTile = 64;  // columns of w, u or the output per pass over a shared B operand
constexpr int kColumnLd = kColumnTile + kRowMajorBPad;
constexpr int kInFlight = 4;  // vector loads each thread keeps in flight

/// std::max for the kernels' compile-time sizes (nvcc keeps std::max to host code).
__host__ __device__ constexpr int larger(int a, int b) {
  return a > b ? a : b;
}

using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, kStep, float>;
using OperandA = wmma::fragment<wmma::matrix_a, kTile, kTile, kStep, wmma::precision::tf32, wmma::row_major>;
template <class Layout>
using OperandB = wmma::fragment<wmma::matrix_b, kTile, kTile, kStep, wmma::precision::tf32, Layout>;

/// acc += A B over the depth steps j < depth (a multiple of 8, at most MaxDepth), operands in shared memory
/// already rounded to TF32: A 16 × depth row-major with rows ALd apart; row-major B is B(i, j) = b[i·BLd +
/// j], column-major B is B(i, j) = b[i + j·BLd], e.g. the transpose of a row-major block. Unroll steps are
/// unrolled (0: all), fewer where several accumulators stay live and the loads of a full unroll would spill.
template <class BLayout, int MaxDepth, int ALd, int BLd, int Unroll = 0>
__device__ void multiply(Accumulator& acc, const float* a, const float* b, int depth = MaxDepth) {
  constexpr bool kRowMajor = std::is_same_v<BLayout, wmma::row_major>;
  constexpr int kUnroll = Unroll > 0 ? Unroll : MaxDepth / kStep;
#pragma unroll kUnroll
  for (int j = 0; j < MaxDepth; j += kStep) {
    if (j < depth) {
      OperandA a_fragment;
      OperandB<BLayout> b_fragment;
      load_shared(a_fragment, a + j, ALd);
      load_shared(b_fragment, kRowMajor ? b + j * BLd : b + j, BLd);
      wmma::mma_sync(acc, a_fragment, b_fragment, acc);
    }
  }
}

// ---- warp scans and sums ----

__device__ inline float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

/// Sum over the `lanes` adjacent lanes of a group (a power of two, at most 32).
__device__ inline float group_sum(float x, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

/// In place: the chunk-local inclusive cumsum of gamma[0, C), by one warp.
__device__ inline void cumsum_in_warp(float* gamma, int C) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  float carry = 0.f;
  for (int base = 0; base < C; base += 32) {
    float x = base + lane < C ? gamma[base + lane] : 0.f;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const float y = __shfl_up_sync(0xffffffffu, x, offset);
      if (lane >= offset) x += y;
    }
    if (base + lane < C) gamma[base + lane] = carry + x;
    carry += __shfl_sync(0xffffffffu, x, 31);
  }
}

/// In place: x_i = Σ_{j ≥ i} x_j over x[0, C) (C a multiple of 32), by one warp.
__device__ inline void reverse_cumsum_in_warp(float* x, int C) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  float carry = 0.f;
  for (int end = C; end > 0; end -= 32) {
    const int i = end - 1 - lane;
    float y = x[i];
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const float z = __shfl_up_sync(0xffffffffu, y, offset);
      if (lane >= offset) y += z;
    }
    x[i] = carry + y;
    carry += __shfl_sync(0xffffffffu, y, 31);
  }
}

// ---- copies ----

inline __device__ float4 load4(const float* p) {
  return __ldg(reinterpret_cast<const float4*>(p));
}

inline __device__ float4 load4(const __nv_bfloat16* p) {
  const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
  const float2 low = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 high = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(low.x, low.y, high.x, high.y);
}

inline __device__ void store4(float* p, float4 x) {
  *reinterpret_cast<float4*>(p) = x;
}

inline __device__ void store4(__nv_bfloat16* p, float4 x) {
  const __nv_bfloat162 low = __floats2bfloat162_rn(x.x, x.y);
  const __nv_bfloat162 high = __floats2bfloat162_rn(x.z, x.w);
  uint2 raw;
  raw.x = *reinterpret_cast<const unsigned*>(&low);
  raw.y = *reinterpret_cast<const unsigned*>(&high);
  *reinterpret_cast<uint2*>(p) = raw;
}

/// The same columns of two rows, loaded together.
struct RowPair {
  float4 first, second;
};

inline __device__ float4 scaled(float4 x, float s) {
  return make_float4(s * x.x, s * x.y, s * x.z, s * x.w);
}

/// x with every element rounded to TF32, as the tensor cores' operands.
inline __device__ float4 tf32(float4 x) {
  return make_float4(wmma::__float_to_tf32(x.x), wmma::__float_to_tf32(x.y), wmma::__float_to_tf32(x.z),
                     wmma::__float_to_tf32(x.w));
}

/// For every row r < rows and every fourth column c < cols (a multiple of 4, at most 4·Threads):
/// sink(r, c, source(r, c)), keeping InFlight loads per thread in flight (source returns a float4, or
/// any value that sink takes). A thread keeps one column and
/// walks the rows, so that no index is divided per element.
template <int Threads = kThreads, int InFlight = kInFlight, class Source, class Sink>
__device__ void copy_rows(int rows, int cols, Source source, Sink sink) {
  const int per_row = cols / 4, rows_per_pass = Threads / per_row;
  const int c = 4 * (threadIdx.x % per_row), first_row = threadIdx.x / per_row;
  if (first_row >= rows_per_pass) return;
  for (int base = first_row; base < rows; base += rows_per_pass * InFlight) {
    decltype(source(0, 0)) values[InFlight];
#pragma unroll
    for (int u = 0; u < InFlight; ++u) {
      if (base + u * rows_per_pass < rows) values[u] = source(base + u * rows_per_pass, c);
    }
#pragma unroll
    for (int u = 0; u < InFlight; ++u) {
      if (base + u * rows_per_pass < rows) sink(base + u * rows_per_pass, c, values[u]);
    }
  }
}

/// f(i, c, leader) for every row i < Rows (a multiple of 32) and every fourth column c < cols (cols / 4 a
/// power of two, at most 32): the lanes of a row are adjacent in one warp, `leader` marks the first of them.
/// Every thread takes part in every round, so f may shuffle across a row's lanes (group_sum), and a row's
/// leader may sum into a per-row term without contending with other lanes.
template <int Threads, int Rows, class F>
__device__ void for_each_row_vector(int cols, F f) {
  const int per_row = cols / 4, rows_per_pass = Threads / per_row;
  const int c = 4 * (threadIdx.x % per_row);
  for (int i = threadIdx.x / per_row; i < Rows; i += rows_per_pass)
    f(i, c, threadIdx.x % per_row == 0);
}

/// f(i, j) for every entry of a rows × cols block (cols at most Threads), one column per thread.
template <int Threads = kThreads, class F>
__device__ void for_each_entry(int rows, int cols, F f) {
  const int rows_per_pass = Threads / cols;
  const int j = threadIdx.x % cols, first_row = threadIdx.x / cols;
  if (first_row >= rows_per_pass) return;
  for (int i = first_row; i < rows; i += rows_per_pass)
    f(i, j);
}

/// The chunk a thread block works on: blockIdx.x is the chunk's place m in its sequence, blockIdx.y the
/// batch·head b·H + h.
struct ChunkBlock {
  int b, h;
  int first;     ///< the chunk's first token
  int valid;     ///< how many of its C rows are tokens (fewer than C in a last, partial chunk)
  size_t chunk;  ///< the chunk's index in [B·H, M, ·] buffers
  int tokens, heads;

  __device__ ChunkBlock(int tokens_, int heads_, int C)
      : b(static_cast<int>(blockIdx.y) / heads_),
        h(static_cast<int>(blockIdx.y) % heads_),
        first(static_cast<int>(blockIdx.x) * C),
        valid(min(C, tokens_ - first)),
        chunk(static_cast<size_t>(blockIdx.y) * gridDim.x + blockIdx.x),
        tokens(tokens_),
        heads(heads_) {}

  /// The index of the chunk's row r in a [B, T, H] buffer; times D, that of its first element in a
  /// contiguous [B, T, H, D] one.
  __device__ size_t token(int r) const { return (static_cast<size_t>(b) * tokens + first + r) * heads + h; }
};

/// The chunk of one head of a [B, T, H, D] input: row r is token first + r, `valid` rows exist.
template <class Scalar>
struct ChunkRows {
  const Scalar* first_row;
  int64_t token_stride;
  int valid;

  __device__ ChunkRows(const TokenRows& rows, const ChunkBlock& block)
      : first_row(static_cast<const Scalar*>(rows.data) + block.b * rows.batch + block.first * rows.token +
                  block.h * rows.head),
        token_stride(rows.token),
        valid(block.valid) {}

  /// Columns [c, c + 4) of row r as float32, zeros past the last token.
  __device__ float4 load(int r, int c) const {
    return r < valid ? load4(first_row + r * token_stride + c) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
};

/// sink(r, c, RowPair{first's, second's}) for columns [c, c + 4) of the C rows of two chunks, whose loads go
/// out in one round.
template <int Threads = kThreads, class Scalar, class Sink>
__device__ void copy_row_pairs(const ChunkRows<Scalar>& first, const ChunkRows<Scalar>& second, int C,
                               int cols, Sink sink) {
  copy_rows<Threads>(
      C, cols,
      [&](int r, int c) {
        return RowPair{first.load(r, c), second.load(r, c)};
      },
      sink);
}

/// dst[r][c] (rows dst_ld apart) = src[r][c + first_column] for r < rows, c < cols (a multiple of 4),
/// times row_scale[r] unless null, and rounded to TF32 when `round`.
template <int Threads = kThreads, class Scalar>
__device__ void load_chunk(float* dst, int dst_ld, const ChunkRows<Scalar>& src, int rows, int cols,
                           int first_column, const float* row_scale, bool round) {
  copy_rows<Threads>(
      rows, cols, [&](int r, int c) { return src.load(r, first_column + c); },
      [&](int r, int c, float4 x) {
        const float4 y = row_scale != nullptr ? scaled(x, row_scale[r]) : x;
        store4(dst + r * dst_ld + c, round ? tf32(y) : y);
      });
}

/// The row tile and column tile of each warp's share of a (C / 16) × col_tiles grid of 16 × 16 tiles:
/// f(r, c) for every tile index warp, warp + Threads / 32, …
template <int Threads = kThreads, class F>
__device__ void for_each_tile(int row_tiles, int col_tiles, F f) {
  for (int tile = threadIdx.x / 32; tile < row_tiles * col_tiles; tile += Threads / 32)
    f(tile / col_tiles, tile % col_tiles);
}

/// f(r, c) for every tile of a row_tiles × col_tiles grid whose row tiles cost in proportion to their depth
/// under a triangular factor (r + 1 or row_tiles − r tiles): a warp takes row tiles r and row_tiles − 1 − r
/// of one column tile together, so that every warp's share costs about the same.
template <int Threads = kThreads, class F>
__device__ void for_each_tile_pair(int row_tiles, int col_tiles, F f) {
  const int pairs = (row_tiles + 1) / 2;
  for (int unit = threadIdx.x / 32; unit < pairs * col_tiles; unit += Threads / 32) {
    const int r = unit / col_tiles, c = unit % col_tiles;
    f(r, c);
    if (row_tiles - 1 - r != r) f(row_tiles - 1 - r, c);
  }
}

/// A (chunk length, key dim) pair a kernel is instantiated for.
template <int C, int K>
struct ChunkShape {};

/// Calls f.template operator()<C, K>() with the (chunk length, key dim) of d when it is one of `Shapes`
/// (ChunkShape<C, K>); false otherwise.
template <class... Shapes, class F>
bool with_instantiated_shape(const ChunkStageDims& d, F&& f) {
  const auto shape = [&]<int C, int K>(ChunkShape<C, K>) {
    if (d.chunk_size != C || d.key_dim != K) return false;
    f.template operator()<C, K>();
    return true;
  };
  return (shape(Shapes{}) || ...);
}

/// Launches kernel(args) with one block of Threads per (chunk, batch·head) and `shared_floats` of dynamic
/// shared memory. nullptr on success, else the CUDA error's text.
template <int Threads = kThreads, class Kernel, class Args>
const char* launch(Kernel kernel, const Args& args, int shared_floats, const ChunkStageDims& d,
                   void* stream) {
  const size_t bytes = sizeof(float) * static_cast<size_t>(shared_floats);
  const cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) return cudaGetErrorString(error);
  const dim3 grid(static_cast<unsigned>((d.tokens + d.chunk_size - 1) / d.chunk_size),
                  static_cast<unsigned>(d.batch * d.heads));
  kernel<<<grid, Threads, bytes, static_cast<cudaStream_t>(stream)>>>(args);
  return dla::ops::kernels::launched();
}

}  // namespace dla::ops::fused::kernels::tiles
