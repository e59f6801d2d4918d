// What the CUDA launchers read of the current device.
#pragma once

#include <cuda_runtime.h>

namespace dla::ops::kernels {

/// The shared memory one block of the current device may opt in to, in bytes; 0 when it cannot be read.
inline int max_shared_bytes() {
  int device = 0, bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return 0;
  return bytes;
}

}  // namespace dla::ops::kernels
