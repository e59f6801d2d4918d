// bf16 tensor-core products on raw fragments: mma.sync m16n8k16 with float32 accumulation, and ldmatrix,
// which loads a warp's fragment of four (or two) 8 × 8 blocks of 16-bit entries from shared memory in one
// instruction, either as stored or transposed. A block's rows may start anywhere 16-byte aligned, so padded
// rows can put the eight rows of a block on distinct banks.
#pragma once

#include <cuda_bf16.h>

#include "shared_address.cuh"

namespace dla::ops::kernels {

/// Loads kCount (2 or 4) 8 × 8 blocks of 16-bit entries: lanes 8i..8i + 7 give the addresses of block i's
/// rows (16 bytes each). Lane (g, t) = (lane / 4, lane % 4) receives in r[i] block i's entries (g, 2t) and
/// (g, 2t + 1), or, kTransposed, (2t, g) and (2t + 1, g).
template <int kCount, bool kTransposed>
__device__ inline void load_blocks(unsigned (&r)[kCount], const void* row) {
  static_assert(kCount == 2 || kCount == 4, "ldmatrix loads 1, 2 or 4 blocks; dla uses 2 or 4");
  const unsigned address = shared_address(row);
  if constexpr (kCount == 4 && kTransposed) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
  } else if constexpr (kCount == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
  } else if constexpr (kTransposed) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(address)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(address)
                 : "memory");
  }
}

/// c += a b for one m16n8k16 bf16 product with float32 accumulation. Lane (g, t) holds A at (g, 2t..2t + 1)
/// in a[0], (g + 8, 2t..) in a[1], (g, 2t + 8..) in a[2] and (g + 8, 2t + 8..) in a[3]; B at (2t..2t + 1, g)
/// in b[0] and (2t + 8..2t + 9, g) in b[1]; C at (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
__device__ inline void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Two floats rounded to bf16 (to nearest even) as one register, low first.
__device__ inline unsigned bf16_pair(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const unsigned*>(&pair);
}

/// The entry-wise product of two registers of bf16 pairs, rounded to bf16.
__device__ inline unsigned multiply_pairs(unsigned x, unsigned y) {
  const __nv_bfloat162 product =
      __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&x), *reinterpret_cast<const __nv_bfloat162*>(&y));
  return *reinterpret_cast<const unsigned*>(&product);
}

}  // namespace dla::ops::kernels
