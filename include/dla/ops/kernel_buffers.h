// What dla's CUDA kernel launchers take from tensors: contiguous 16-byte aligned buffers (the kernels move
// float4s) and the current CUDA stream.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif

namespace dla::ops {

/// x contiguous and 16-byte aligned; a view at an odd offset is copied. Undefined stays undefined.
inline at::Tensor kernel_buffer(const at::Tensor& x) {
  if (!x.defined()) return x;
  at::Tensor contiguous = x.contiguous();
  if (reinterpret_cast<std::uintptr_t>(contiguous.data_ptr()) % 16 != 0) contiguous = contiguous.clone();
  return contiguous;
}

/// The float data of a kernel buffer, or null for an undefined (absent) one.
inline const float* data_or_null(const at::Tensor& x) {
  return x.defined() ? x.data_ptr<float>() : nullptr;
}

/// The same for buffers whose element type the kernel takes separately (float32 or bf16).
inline void* untyped_data_or_null(const at::Tensor& x) {
  return x.defined() ? x.data_ptr() : nullptr;
}

#if defined(DLA_WITH_CUDA)
/// The current CUDA stream of a tensor's device, as the void* the launchers take.
inline void* current_cuda_stream(const at::Tensor& on) {
  return c10::cuda::getCurrentCUDAStream(on.device().index()).stream();
}
#endif

}  // namespace dla::ops
