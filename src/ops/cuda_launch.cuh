// What the CUDA launchers ask of the runtime: the device's shared-memory limit and the last launch's error.
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

/// nullptr when the last kernel launch succeeded, else the CUDA error's text.
inline const char* launched() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace dla::ops::kernels
