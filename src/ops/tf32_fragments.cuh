// TF32 tensor-core products: the rounding the kernels apply to their WMMA operand fragments, and the raw
// mma.sync form, whose fragment layout is known, so that a warp can load each fragment once for several
// products and scale operands as it loads them.
#pragma once

#include <mma.h>

#include "async_copy.cuh"

namespace dla::ops::kernels {

/// Rounds every element of a loaded WMMA operand fragment to TF32, as the TF32 mma expects.
template <class Fragment>
__device__ void round_to_tf32(Fragment& f) {
#pragma unroll
  for (int t = 0; t < f.num_elements; ++t)
    f.x[t] = nvcuda::wmma::__float_to_tf32(f.x[t]);
}

/// x rounded to TF32 (to nearest, ties away from zero), as the bits an mma operand register holds.
__device__ inline unsigned tf32_bits(float x) {
  unsigned bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(x));
  return bits;
}

/// Rounds to TF32, in place, the 16-byte pieces of a [rows, columns] shared matrix (rows ld apart) that this
/// thread started with copy_columns_async<kThreads>(dst, ld, ..., columns, rows), the same pieces by the same
/// for_each_piece: after its own wait_copies a thread may round them without waiting for the block.
template <int kThreads>
__device__ void round_copied_to_tf32(float* dst, int ld, int columns, int rows) {
  for_each_piece<kThreads>(columns / 4, rows, [&](int row, int part) {
    float4* piece = reinterpret_cast<float4*>(dst + row * ld + part);
    float4 x = *piece;
    x.x = __uint_as_float(tf32_bits(x.x));
    x.y = __uint_as_float(tf32_bits(x.y));
    x.z = __uint_as_float(tf32_bits(x.z));
    x.w = __uint_as_float(tf32_bits(x.w));
    *piece = x;
  });
}

/// c += a b for one m16n8k8 TF32 product. Lane (g, t) = (lane / 4, lane % 4) holds A at (row, column) (g, t),
/// (g + 8, t), (g, t + 4), (g + 8, t + 4); B at (t, g), (t + 4, g); C at (g, 2t), (g, 2t + 1), (g + 8, 2t),
/// (g + 8, 2t + 1).
__device__ inline void mma_tf32(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace dla::ops::kernels
