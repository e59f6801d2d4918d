// The 32-bit shared-memory address of a generic pointer, as the shared-space instructions take it
// (cp.async, ldmatrix, wmma with .shared).
#pragma once

#include <cuda_runtime.h>

namespace dla::ops::kernels {

/// The shared-memory address of p, which must point into shared memory.
__device__ inline unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

}  // namespace dla::ops::kernels
