// A warp's 32 × 32 block of a tensor-core product held in registers, multiplied on raw `mma.sync` fragments:
// TF32 operands rounded as they load, or bf16 operands loaded by ldmatrix. The building block of the kernels
// that give each warp a block of a chunk's products (the slot kernels in src/memory, the fused op's
// chunk_gradients).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "bf16_fragments.cuh"
#include "tf32_fragments.cuh"

namespace dla::ops::kernels {

constexpr int kBlock = 32;    // edge of a warp's output block
constexpr int kTf32Step = 8;  // depth of one TF32 mma

/// A warp's 32 × 32 block of a product in registers, as 2 × 4 m16n8 accumulators of `mma.sync`: lane
/// (g, t) = (lane / 4, lane % 4) holds rows g and g + 8 of each 16-row tile at columns 2t and 2t + 1 of each
/// 8-column tile. Built from raw fragments, each loaded once per step for all eight products (WMMA loads and
/// rounds them per tile, which made the kernels issue-bound).
struct WarpBlock {
  float c[2][4][4];
};

__device__ inline void clear(WarpBlock& block) {
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        block.c[m][n][e] = 0.f;
}

/// How an operand of a warp block's product is stored: element (i, j), i the output row (A) or column (B)
/// and j the depth, at p[i·ld + j] (by_row) or p[j·ld + i] (by_column).
enum class Stored { by_row, by_column };

/// One operand at p, rows ld apart (in elements of T: float, or bf16 for compact states); with kScaled,
/// element (i, j) is scaled by scale[i].
template <class T = float>
struct Operand {
  const T* p;
  int ld;
  const float* scale = nullptr;
};

__device__ inline float to_float(float x) {
  return x;
}
__device__ inline float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <Stored kStored, class T>
__device__ float element(const Operand<T>& x, int i, int j) {
  return to_float(kStored == Stored::by_row ? x.p[i * x.ld + j] : x.p[j * x.ld + i]);
}

/// The TF32 bits of an operand's element: rounded, unless it came from bf16 unscaled (then already exact).
template <class T>
__device__ unsigned operand_bits(float x, float scale, bool scaled) {
  if (std::is_same_v<T, __nv_bfloat16> && !scaled) return __float_as_uint(x);
  return tf32_bits(scaled ? x * scale : x);
}

/// block += A B over `depth` (a multiple of 8), A's 32 output rows and B's 32 output columns as Operands
/// stored kA and kB, scaled where kScaleA and kScaleB. Both round to TF32 as they load. The element types
/// are float unless given (a braced operand takes the default).
template <Stored kA, bool kScaleA, Stored kB, bool kScaleB, class TA = float, class TB = float>
__device__ void multiply_accumulate(WarpBlock& block, const Operand<TA>& a, const Operand<TB>& b, int depth) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float a_scale[2][2], b_scale[4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      a_scale[m][h] = kScaleA ? a.scale[16 * m + 8 * h + g] : 1.f;
#pragma unroll
  for (int n = 0; n < 4; ++n)
    b_scale[n] = kScaleB ? b.scale[8 * n + g] : 1.f;
  for (int j = 0; j < depth; j += kTf32Step) {
    unsigned a_fragment[2][4], b_fragment[4][2];
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      const int top = 16 * m + g, bottom = top + 8;
      a_fragment[m][0] = operand_bits<TA>(element<kA>(a, top, j + t), a_scale[m][0], kScaleA);
      a_fragment[m][1] = operand_bits<TA>(element<kA>(a, bottom, j + t), a_scale[m][1], kScaleA);
      a_fragment[m][2] = operand_bits<TA>(element<kA>(a, top, j + t + 4), a_scale[m][0], kScaleA);
      a_fragment[m][3] = operand_bits<TA>(element<kA>(a, bottom, j + t + 4), a_scale[m][1], kScaleA);
    }
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      b_fragment[n][0] = operand_bits<TB>(element<kB>(b, 8 * n + g, j + t), b_scale[n], kScaleB);
      b_fragment[n][1] = operand_bits<TB>(element<kB>(b, 8 * n + g, j + t + 4), b_scale[n], kScaleB);
    }
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n)
        mma_tf32(block.c[m][n], a_fragment[m], b_fragment[n]);
  }
}

/// block += A Bᵀ over `depth`: A's and B's 32 rows with the depth along the row.
template <class TA = float, class TB = float>
__device__ void multiply_accumulate_transposed(WarpBlock& block, const TA* a, int a_ld, const TB* b, int b_ld,
                                               int depth) {
  multiply_accumulate<Stored::by_row, false, Stored::by_row, false, TA, TB>(block, Operand<TA>{a, a_ld},
                                                                            Operand<TB>{b, b_ld}, depth);
}

/// block += A B over `depth` (a multiple of 16) for bf16 operands (compact states), stored kA and kB and
/// scaled where kScaleA and kScaleB as in multiply_accumulate, rows 16-byte aligned: on bf16 tensor cores
/// (m16n8k16; the products of bf16 entries are exact, as in TF32; a scaled entry is rounded to bf16), every
/// fragment loaded by ldmatrix, a step's two A and four B fragments in four loads.
template <Stored kA, bool kScaleA, Stored kB, bool kScaleB>
__device__ void multiply_accumulate_bf16(WarpBlock& block, const Operand<__nv_bfloat16>& a,
                                         const Operand<__nv_bfloat16>& b, int depth) {
  const int lane = threadIdx.x % 32, g = lane / 4;
  // The lane's row address for a 16 × 16 block of blocks (0, 0), (8, 0), (0, 8), (8, 8) in (row, depth),
  // loaded as stored from a by-row operand or transposed from a by-column one: an A fragment, or for B the
  // fragments of 16 output columns, r[0], r[1] the first 8's and r[2], r[3] the next 8's. B's blocks are
  // ordered (0, 0), (0, 8), (8, 0), (8, 8) by row and (0, 0), (8, 0), (0, 8), (8, 8) by column.
  const auto rows_of = [&](const Operand<__nv_bfloat16>& x, Stored stored, bool is_b) {
    const bool across = (stored == Stored::by_row) == is_b;  // the blocks' first index runs down x's rows
    return across ? x.p + (lane % 8 + (lane / 16) * 8) * x.ld + ((lane / 8) % 2) * 8
                  : x.p + (lane % 16) * x.ld + (lane / 16) * 8;
  };
  const __nv_bfloat16* a_rows = rows_of(a, kA, false);
  const __nv_bfloat16* b_rows = rows_of(b, kB, true);
  // Steps along the output rows (A) or columns (B), 16 at a time, and along the depth.
  const int a_tile = kA == Stored::by_row ? 16 * a.ld : 16, a_step = kA == Stored::by_row ? 16 : 16 * a.ld;
  const int b_tile = kB == Stored::by_row ? 16 * b.ld : 16, b_step = kB == Stored::by_row ? 16 : 16 * b.ld;
  unsigned a_scale[2][2], b_scale[4];  // bf16 pairs of a row's (A) or column's (B) scale
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float x = kScaleA ? a.scale[16 * m + 8 * h + g] : 1.f;
      a_scale[m][h] = bf16_pair(x, x);
    }
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    const float x = kScaleB ? b.scale[8 * n + g] : 1.f;
    b_scale[n] = bf16_pair(x, x);
  }
  for (int k = 0; k < depth; k += 16) {
    unsigned a_fragments[2][4], b_fragments[2][4];
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      load_blocks<4, kA == Stored::by_column>(a_fragments[m], a_rows + m * a_tile + (k / 16) * a_step);
      if constexpr (kScaleA) {
#pragma unroll
        for (int r = 0; r < 4; ++r)  // registers 0 and 2 hold row g, 1 and 3 row g + 8
          a_fragments[m][r] = multiply_pairs(a_fragments[m][r], a_scale[m][r % 2]);
      }
    }
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      load_blocks<4, kB == Stored::by_column>(b_fragments[p], b_rows + p * b_tile + (k / 16) * b_step);
      if constexpr (kScaleB) {
#pragma unroll
        for (int r = 0; r < 4; ++r)  // registers 0, 1 hold output column g of tile 2p, 2 and 3 of 2p + 1
          b_fragments[p][r] = multiply_pairs(b_fragments[p][r], b_scale[2 * p + r / 2]);
      }
    }
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n)
        mma_bf16(block.c[m][n], a_fragments[m], b_fragments[n / 2][2 * (n % 2)],
                 b_fragments[n / 2][2 * (n % 2) + 1]);
  }
}

/// multiply_accumulate_transposed for bf16 operands (compact states), on bf16 tensor cores.
__device__ inline void multiply_accumulate_transposed(WarpBlock& block, const __nv_bfloat16* a, int a_ld,
                                                      const __nv_bfloat16* b, int b_ld, int depth) {
  multiply_accumulate_bf16<Stored::by_row, false, Stored::by_row, false>(block, {a, a_ld}, {b, b_ld}, depth);
}

/// Calls f(m, n, h, row, column) for each pair of entries the lane holds of a warp block: c[m][n][2h] and
/// c[m][n][2h + 1] sit at (row, column) and (row, column + 1) of the block.
template <class F>
__device__ void for_each_lane_pair(F f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        f(m, n, h, 16 * m + 8 * h + g, 8 * n + 2 * t);
}

/// The sum of the block's diagonal over the warp's lanes (each lane returns its part).
__device__ inline float diagonal_sum(const WarpBlock& block) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float sum = 0.f;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)  // entry e: row 16m + 8(e / 2) + g, column 8n + 2t + e % 2
        if (16 * m + 8 * (e / 2) + g == 8 * n + 2 * t + e % 2) sum += block.c[m][n][e];
  return sum;
}

/// block = scale · src (rows ld apart), src as store leaves it.
__device__ inline void load(WarpBlock& block, const float* src, int ld, float scale = 1.f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      float* c = block.c[m][n];
      const float* top = src + (16 * m + g) * ld + 8 * n + 2 * t;
      const float2 upper = *reinterpret_cast<const float2*>(top),
                   lower = *reinterpret_cast<const float2*>(top + 8 * ld);
      c[0] = scale * upper.x;
      c[1] = scale * upper.y;
      c[2] = scale * lower.x;
      c[3] = scale * lower.y;
    }
}

/// dst (rows ld apart) = scale · block.
__device__ inline void store(const WarpBlock& block, float* dst, int ld, float scale) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const float* c = block.c[m][n];
      float* top = dst + (16 * m + g) * ld + 8 * n + 2 * t;
      *reinterpret_cast<float2*>(top) = make_float2(scale * c[0], scale * c[1]);
      *reinterpret_cast<float2*>(top + 8 * ld) = make_float2(scale * c[2], scale * c[3]);
    }
}

}  // namespace dla::ops::kernels
