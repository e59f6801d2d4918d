// Device-side building blocks of the per-chunk kernels of the multi-state forms (intra_chunk_forward.cu,
// intra_chunk_gradients.cu): one block of 512 threads per chunk of C = 64 tokens, shared-memory operands
// already rounded to TF32, products on tensor cores (WMMA m16n16k8, float32 accumulators) over depth ranges
// that triangular factors cut short.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "../ops/cuda_launch.cuh"
#include "../ops/fused/chunk_tiles.cuh"
#include "intra_chunk_gradients_kernel.h"

namespace dla::memory::kernels::chunk_products {

using namespace dla::ops::fused::kernels::tiles;

constexpr int kC = 64;                 // chunk length
constexpr int kRowTiles = kC / kTile;  // 16-row tiles of a chunk
constexpr int kLowerTiles = kRowTiles * (kRowTiles + 1) / 2;
constexpr int kValueTile = 64;  // value columns per pass
constexpr int kSquareLd = kC + kPad;
constexpr int kValueLd = kValueTile + kPad;
// 16 warps: the phases between barriers are short, and more warps keep more loads and products in flight
// per block (its shared memory allows one block per SM).
constexpr int kBlockThreads = 512;
constexpr int kBlockWarps = kBlockThreads / 32;

template <class Layout>
constexpr bool kRowMajor = std::is_same_v<Layout, wmma::row_major>;

/// A shared-memory matrix as a tensor-core operand: M(i, j) = data[i·Ld + j] (row_major), or data[i + j·Ld]
/// (col_major: the transpose of the row-major matrix stored there).
template <class Layout, int Ld>
struct Operand {
  const float* data;
  __device__ const float* at(int i, int j) const {
    return kRowMajor<Layout> ? data + i * Ld + j : data + i + j * Ld;
  }
};

template <int Ld>
__device__ inline Operand<wmma::row_major, Ld> rows_of(const float* data) {
  return {data};
}

/// The transpose of the row-major matrix at data.
template <int Ld>
__device__ inline Operand<wmma::col_major, Ld> transpose_of(const float* data) {
  return {data};
}

/// acc += A(row tile r, depth) B(depth, column tile c) over the depth [first, last) (multiples of 8).
template <class ALayout, int ALd, class BLayout, int BLd>
__device__ inline void multiply(Accumulator& acc, Operand<ALayout, ALd> a, Operand<BLayout, BLd> b, int r,
                                int c, int first, int last) {
#pragma unroll 4
  for (int j = first; j < last; j += kStep) {
    wmma::fragment<wmma::matrix_a, kTile, kTile, kStep, wmma::precision::tf32, ALayout> a_fragment;
    OperandB<BLayout> b_fragment;
    load_shared(a_fragment, a.at(r * kTile, j), ALd);
    load_shared(b_fragment, b.at(j, c * kTile), BLd);
    wmma::mma_sync(acc, a_fragment, b_fragment, acc);
  }
}

__device__ inline void round_to_tf32(Accumulator& acc) {
#pragma unroll
  for (int t = 0; t < acc.num_elements; ++t)
    acc.x[t] = wmma::__float_to_tf32(acc.x[t]);
}

/// out = P T for lower-triangular C × C matrices P and T in shared memory (rows kSquareLd apart): row tile r
/// of P ends at depth (r + 1)·16 and column tile c of T starts at c·16, so tiles above the diagonal are zero.
/// Every warp takes part; out is complete after the block's next barrier.
__device__ inline void lower_product(float* out, const float* p, const float* t) {
  for (int tile = threadIdx.x / 32; tile < kRowTiles * kRowTiles; tile += kBlockWarps) {
    const int r = tile / kRowTiles, c = tile % kRowTiles;
    Accumulator acc;
    wmma::fill_fragment(acc, 0.f);
    if (c <= r) multiply(acc, rows_of<kSquareLd>(p), rows_of<kSquareLd>(t), r, c, c * kTile, (r + 1) * kTile);
    store_shared(out + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
  }
}

/// The warp's lower block s (lower_block) of R = P T for lower-triangular C × C operands P and T (rows ld
/// apart): row block r of P ends at its diagonal and column block c of T starts at its own, so the depth runs
/// over blocks c..r. f(i, j, x, y) for the entries (i, j) and (i, j + 1) of every pair the lane holds.
template <class T, class F>
__device__ void for_each_read_pair(int s, const T* pairs, const T* inverse, int ld, F f) {
  const int2 lower = lower_block(s);
  const int rows = lower.x * kBlock, columns = lower.y * kBlock;
  WarpBlock acc;
  dla::ops::kernels::clear(acc);
  accumulate<Stored::by_row, Stored::by_column>(
      acc, pairs + rows * ld + columns, ld, inverse + columns * ld + columns, ld, rows + kBlock - columns);
  for_each_block_pair(acc, rows, columns, f);
}

/// The lower-triangular 16 × 16 tiles of a C × C matrix, row by row: f(r, c) for the warp's share.
template <class F>
__device__ inline void for_each_lower_tile(F f) {
  for (int tile = threadIdx.x / 32; tile < kLowerTiles; tile += kBlockWarps) {
    int r = 0;
    while ((r + 1) * (r + 2) / 2 <= tile)
      ++r;
    f(r, tile - r * (r + 1) / 2);
  }
}

/// f(i, c, leader) for every row i < C and every fourth column c < cols, as tiles::for_each_row_vector.
template <class F>
__device__ inline void for_each_row_vector(int cols, F f) {
  dla::ops::fused::kernels::tiles::for_each_row_vector<kBlockThreads, kC>(cols, f);
}

inline __device__ float dot(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

/// The rows of the block's chunk (blockIdx.x, in B·H·N order) of a ChunkedRows operand, as float4 columns.
class BlockRows {
 public:
  __device__ BlockRows(const ChunkedRows& x, const IntraChunkGradientDims& dims)
      : bf16_(x.bf16), row_(x.row) {
    const int64_t chunk = blockIdx.x, bh = chunk / dims.sequence_chunks;
    const int64_t first =
        bh / dims.heads * x.batch + bh % dims.heads * x.head + chunk % dims.sequence_chunks * x.chunk;
    first_ = bf16_ ? static_cast<void*>(static_cast<__nv_bfloat16*>(x.data) + first)
                   : static_cast<void*>(static_cast<float*>(x.data) + first);
  }

  /// Columns [c, c + 4) of row r.
  __device__ float4 load(int r, int c) const {
    const int64_t at = r * row_ + c;
    return bf16_ ? load4(static_cast<const __nv_bfloat16*>(first_) + at)
                 : load4(static_cast<const float*>(first_) + at);
  }

  __device__ void store(int r, int c, float4 x) const {
    const int64_t at = r * row_ + c;
    if (bf16_)
      store4(static_cast<__nv_bfloat16*>(first_) + at, x);
    else
      store4(static_cast<float*>(first_) + at, x);
  }

  /// Columns c and c + 1 of row r (c even), as a warp block's lane holds them.
  __device__ float2 load2(int r, int c) const {
    const int64_t at = r * row_ + c;
    return bf16_ ? __bfloat1622float2(*(static_cast<const __nv_bfloat162*>(first_) + at / 2))
                 : *reinterpret_cast<const float2*>(static_cast<const float*>(first_) + at);
  }

  __device__ void store2(int r, int c, float x, float y) const {
    const int64_t at = r * row_ + c;
    if (bf16_)
      store_pair(static_cast<__nv_bfloat16*>(first_) + at, x, y);
    else
      store_pair(static_cast<float*>(first_) + at, x, y);
  }

 private:
  void* first_;
  bool bf16_;
  int64_t row_;
};

/// Rows of a row-major global float32 matrix, `ld` apart from the chunk's first row at data.
struct MatrixRows {
  const float* data;
  int64_t ld;

  __device__ float4 load(int r, int c) const { return load4(data + r * ld + c); }
};

/// What copy_operands moves: columns [first, first + cols) of the chunk's C rows of source (BlockRows or
/// MatrixRows) to dst (float32, or bf16: rounded), rows dst_ld apart; a float32 operand is rounded to TF32
/// unless `exact`.
template <class Source, class Dst = float>
struct OperandCopy {
  Dst* dst;
  int dst_ld;
  Source source;
  int first = 0;
  bool exact = false;
};

/// C rows of a ChunkedRows operand, from column `first`, as an operand.
template <class Dst>
__device__ inline OperandCopy<BlockRows, Dst> operand(Dst* dst, int dst_ld, const BlockRows& rows,
                                                      int first = 0) {
  return {dst, dst_ld, rows, first};
}

/// C rows of a global float32 matrix (rows src_ld apart from src), from column `first`, as an operand.
template <class Dst>
__device__ inline OperandCopy<MatrixRows, Dst> operand(Dst* dst, int dst_ld, const float* src, int64_t src_ld,
                                                       int first = 0) {
  return {dst, dst_ld, {src, src_ld}, first};
}

/// The same, copied exactly (not an operand, read entry by entry).
__device__ inline OperandCopy<MatrixRows> exact_copy(float* dst, int dst_ld, const float* src,
                                                     int64_t src_ld) {
  return {dst, dst_ld, {src, src_ld}, 0, true};
}

template <int N>
struct Vectors {
  float4 v[N];
};

/// x as copy_operands stores it to dst.
__device__ inline void store_copied(float* dst, float4 x, bool exact) {
  store4(dst, exact ? x : tf32(x));
}
__device__ inline void store_copied(__nv_bfloat16* dst, float4 x, bool) {
  store4(dst, x);
}

/// The copies, `cols` columns each, in one round of loads: a thread issues its loads for all of them before
/// it waits for any, instead of one round trip to global memory per operand.
template <class... Sources, class... Dsts>
__device__ inline void copy_operands(int cols, const OperandCopy<Sources, Dsts>&... copies) {
  constexpr int kCount = sizeof...(Sources);
  copy_rows<kBlockThreads>(
      kC, cols, [&](int r, int c) { return Vectors<kCount>{{copies.source.load(r, copies.first + c)...}}; },
      [&](int r, int c, const Vectors<kCount>& x) {
        int i = 0;
        ((store_copied(copies.dst + r * copies.dst_ld + c, x.v[i], copies.exact), ++i), ...);
      });
}

/// Both kernels' first operands: q and k into their C × K slots (rows wide_ld apart), and the chunk's T
/// (rows square_ld apart) and Λ (exactly, rows kSquareLd apart) from a.t_inverse and a.lam_in into theirs,
/// Λ alone for SSD. Two rounds of loads; complete after the block's next barrier.
template <bool kDeltaRule, class Args, class T>
__device__ inline void load_chunk_operands(const Args& a, size_t pairs_at, const BlockRows& q_rows,
                                           const BlockRows& k_rows, int K, int wide_ld, T* queries, T* keys,
                                           int square_ld, T* inverse, float* lam) {
  copy_operands(K, operand(queries, wide_ld, q_rows), operand(keys, wide_ld, k_rows));
  if constexpr (kDeltaRule)
    copy_operands(kC, operand(inverse, square_ld, a.t_inverse + pairs_at, kC),
                  exact_copy(lam, kSquareLd, a.lam_in + pairs_at, kC));
  else
    copy_operands(kC, exact_copy(lam, kSquareLd, a.lam_in + pairs_at, kC));
}

// ---- host side of both kernels ----

/// Whether the per-chunk kernels take these dims (C = kC, K of 64 or 128, V a multiple of 32), given the
/// shared floats their layout needs for 64 and for 128 keys.
inline bool supports_chunk_dims(const IntraChunkGradientDims& dims, size_t floats_64, size_t floats_128) {
  if (dims.chunk_size != kC || (dims.key_dim != 64 && dims.key_dim != 128) || dims.value_dim < 32 ||
      dims.value_dim % 32 != 0 || dims.value_dim > (int64_t{1} << 20) || dims.chunks < 1 ||
      dims.chunks > (int64_t{1} << 31) - 1)
    return false;
  const size_t floats = dims.key_dim == 64 ? floats_64 : floats_128;
  return sizeof(float) * floats <= static_cast<size_t>(std::max(dla::ops::kernels::max_shared_bytes(), 0));
}

/// launch(delta_rule, key_dim) with both as compile-time constants (std::bool_constant,
/// std::integral_constant) for the dims' delta rule and K (64 or 128).
template <class Launch>
const char* with_chunk_kernel(const IntraChunkGradientDims& dims, Launch launch) {
  using K64 = std::integral_constant<int, 64>;
  using K128 = std::integral_constant<int, 128>;
  if (dims.delta_rule)
    return dims.key_dim == 64 ? launch(std::true_type{}, K64{}) : launch(std::true_type{}, K128{});
  return dims.key_dim == 64 ? launch(std::false_type{}, K64{}) : launch(std::false_type{}, K128{});
}

/// One block of kBlockThreads per chunk, with `floats` of dynamic shared memory.
template <class Kernel, class Args>
const char* launch_per_chunk(Kernel kernel, const Args& args, const IntraChunkGradientDims& dims,
                             size_t floats, void* stream) {
  const int bytes = static_cast<int>(sizeof(float) * floats);
  const cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (error != cudaSuccess) return cudaGetErrorString(error);
  kernel<<<static_cast<unsigned>(dims.chunks), kBlockThreads, bytes, static_cast<cudaStream_t>(stream)>>>(
      args, dims);
  return dla::ops::kernels::launched();
}

}  // namespace dla::memory::kernels::chunk_products
