// The rounding the TF32 tensor-core kernels apply to their WMMA operand fragments (state pass, slot pass).
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

}  // namespace dla::ops::kernels
