// Device-side building blocks of the per-chunk kernels (the fused op's chunk_stages.cu and
// chunk_gradients.cu, the multi-state forms' chunk_products.cuh): one thread block per chunk, of kThreads
// unless a kernel picks another `Threads`, moves chunk rows between global and shared memory with vector
// loads, and multiplies shared-memory operands on tensor cores: the fused op's kernels with a warp's 32 × 32
// block in registers (../warp_block.cuh), the multi-state ones on WMMA 16 × 16 TF32 tiles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "../async_copy.cuh"
#include "../cuda_launch.cuh"
#include "../warp_block.cuh"
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
// Shared float32 rows are padded by 4 floats (row length ≡ 4 mod 32), so that the WMMA fragment loads of rows
// read as A or as a column-major B hit 32 distinct banks.
constexpr int kPad = 4;
constexpr int kInFlight = 4;  // vector loads each thread keeps in flight

/// std::max for the kernels' compile-time sizes (nvcc keeps std::max to host code).
__host__ __device__ constexpr int larger(int a, int b) {
  return a > b ? a : b;
}

using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, kStep, float>;
template <class Layout>
using OperandB = wmma::fragment<wmma::matrix_b, kTile, kTile, kStep, wmma::precision::tf32, Layout>;

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

/// Four entries of shared memory as float32.
inline __device__ float4 load_shared4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

inline __device__ float4 load_shared4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 low = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 high = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(low.x, low.y, high.x, high.y);
}

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

/// Starts copying columns [first_column, first_column + cols) of the chunk's rows (cols a multiple of 4)
/// into shared rows dst_ld apart, zeros past the last token; four entries per copy, the alignment token_rows
/// guarantees. The block's Threads threads share the copies.
template <int Threads = kThreads, class Scalar>
__device__ void copy_chunk_rows_async(Scalar* dst, int dst_ld, const ChunkRows<Scalar>& rows, int C,
                                      int first_column, int cols) {
  dla::ops::kernels::for_each_piece<Threads>(cols / 4, C, [&](int r, int c) {
    const bool valid = r < rows.valid;
    const Scalar* from = rows.first_row + (valid ? r * rows.token_stride + first_column + c : 0);
    dla::ops::kernels::copy_bytes_async<4 * sizeof(Scalar)>(dst + r * dst_ld + c, from, valid);
  });
}

/// The row tile and column tile of each warp's share of a (C / 16) × col_tiles grid of 16 × 16 tiles:
/// f(r, c) for every tile index warp, warp + Threads / 32, …
template <int Threads = kThreads, class F>
__device__ void for_each_tile(int row_tiles, int col_tiles, F f) {
  for (int tile = threadIdx.x / 32; tile < row_tiles * col_tiles; tile += Threads / 32)
    f(tile / col_tiles, tile % col_tiles);
}

// ---- warp blocks: a warp's 32 × 32 block of a product in registers (../warp_block.cuh) ----

using dla::ops::kernels::kBlock;
using dla::ops::kernels::Stored;
using dla::ops::kernels::WarpBlock;

/// The element type of the shared operands of the kernels built on warp blocks: bf16 for bf16 inputs (bf16
/// tensor cores, fragments by ldmatrix), float32 for float32 inputs (rounded to TF32 as the fragments load).
template <class Scalar>
using OperandOf = std::conditional_t<std::is_same_v<Scalar, __nv_bfloat16>, __nv_bfloat16, float>;

/// Operand rows are padded by 16 bytes, so that the eight rows of an 8 × 8 fragment block (ldmatrix) or the
/// rows a TF32 fragment reads fall on distinct banks.
template <class T>
constexpr int kOperandPad = 16 / static_cast<int>(sizeof(T));

/// block += A B over `depth` (a multiple of 16), the warp's 32 output rows of A and 32 output columns of B
/// starting at their first entries a and b, stored kA and kB (rows ld apart): bf16 operands on bf16 tensor
/// cores, float32 ones in TF32.
template <Stored kA, Stored kB, class T>
__device__ void accumulate(WarpBlock& block, const T* a, int a_ld, const T* b, int b_ld, int depth) {
  using dla::ops::kernels::Operand;
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    dla::ops::kernels::multiply_accumulate_bf16<kA, false, kB, false>(block, Operand<T>{a, a_ld},
                                                                      Operand<T>{b, b_ld}, depth);
  else
    dla::ops::kernels::multiply_accumulate<kA, false, kB, false>(block, Operand<T>{a, a_ld},
                                                                 Operand<T>{b, b_ld}, depth);
}

/// The lower 32 × 32 block s of a C × C matrix, row by row: (row block, column block).
inline __device__ int2 lower_block(int s) {
  int r = 0;
  while ((r + 1) * (r + 2) / 2 <= s)
    ++r;
  return make_int2(r, s - r * (r + 1) / 2);
}

/// f(row, column, x, y) for the entries (row, column) and (row, column + 1) of the warp's block whose first
/// entry is (first_row, first_column), for every pair the lane holds.
template <class F>
__device__ void for_each_block_pair(const WarpBlock& block, int first_row, int first_column, F f) {
  dla::ops::kernels::for_each_lane_pair([&](int m, int n, int h, int row, int column) {
    f(first_row + row, first_column + column, block.c[m][n][2 * h], block.c[m][n][2 * h + 1]);
  });
}

/// The warp's lower block s (lower_block) of (a bᵀ) ⊙ D, with a and b the C rows of by-row operands (rows
/// a_ld and b_ld apart, `depth` columns) and D_ij = exp(γ_i − γ_j) on and below the diagonal, zero above it:
/// f(i, j, x, y) for the entries (i, j) and (i, j + 1) of every pair the lane holds.
template <class T, class F>
__device__ void for_each_decayed_pair(int s, const T* a, int a_ld, const T* b, int b_ld, int depth,
                                      const float* gamma, F f) {
  const int2 lower = lower_block(s);
  const int rows = lower.x * kBlock, columns = lower.y * kBlock;
  WarpBlock acc;
  dla::ops::kernels::clear(acc);
  accumulate<Stored::by_row, Stored::by_row>(acc, a + rows * a_ld, a_ld, b + columns * b_ld, b_ld, depth);
  for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
    f(i, j, j <= i ? x * expf(gamma[i] - gamma[j]) : 0.f,
      j + 1 <= i ? y * expf(gamma[i] - gamma[j + 1]) : 0.f);
  });
}

/// Stores x and y at p[0] and p[1], as float32 or bf16.
inline __device__ void store_pair(float* p, float x, float y) {
  *reinterpret_cast<float2*>(p) = make_float2(x, y);
}
inline __device__ void store_pair(__nv_bfloat16* p, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}

/// x as an operand of type T.
template <class T>
inline __device__ T operand_of(float x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(x);
  else
    return x;
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
