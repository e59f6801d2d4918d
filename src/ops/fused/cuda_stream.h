// The current CUDA stream of a tensor's device, as the void* the kernel launchers of kernels.h take.
#pragma once

#if defined(DLA_WITH_CUDA)
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>

namespace dla::ops::fused {

inline void* current_cuda_stream(const at::Tensor& on) {
  return c10::cuda::getCurrentCUDAStream(on.device().index()).stream();
}

}  // namespace dla::ops::fused
#endif
