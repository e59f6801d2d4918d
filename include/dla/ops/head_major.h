// Tokens-major to heads-major: x of [B, T, H, ...] as a new contiguous [B, H, T, ...] tensor in a compute
// dtype, the layout every chunkwise op works in. On CUDA it is one pass of a kernel that converts as it
// transposes (and its backward one pass back); elsewhere, and under DLA_KERNELS=aten, LibTorch's copy.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::ops {

/// x.movedim(1, 2) as a new contiguous tensor of `dtype`, differentiable. x has at least 3 dims.
at::Tensor to_head_major(const at::Tensor& x_BTH_, at::ScalarType dtype);

/// Whether to_head_major on this tensor runs the CUDA kernel: a CUDA x of float32, bfloat16 or float16 to
/// float32.
bool to_head_major_uses_cuda_kernel(const at::Tensor& x_BTH_, at::ScalarType dtype);

}  // namespace dla::ops
