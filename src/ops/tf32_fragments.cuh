// TF32 tensor-core products: the rounding the kernels apply to their WMMA operand fragments, and the raw
// mma.sync form, whose fragment layout is known, so that a warp can load each fragment once for several
// products and scale operands as it loads them.
#pragma once

#include <mma.h>

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
