// Tokens-major to heads-major and back: x of [B, T, H, ...] as a new contiguous [B, H, T, ...] tensor in a
// compute dtype, the layout every chunkwise op works in, and its outputs back to [B, T, H, ...] in the
// model's dtype. On CUDA each is one pass of a kernel that converts as it transposes (and its backward one
// pass back); elsewhere, and under DLA_KERNELS=aten, LibTorch ops.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::ops {

/// x.movedim(1, 2) as a new contiguous tensor of `dtype`, differentiable. x has at least 3 dims.
at::Tensor to_head_major(const at::Tensor& x_BTH_, at::ScalarType dtype);

/// Whether to_head_major on this tensor runs the CUDA kernel: a CUDA x of float32, bfloat16 or float16 to
/// float32.
bool to_head_major_uses_cuda_kernel(const at::Tensor& x_BTH_, at::ScalarType dtype);

/// scale · (a + b) moved to [B, T, H, ...] as a new contiguous tensor of `dtype`, differentiable: a and b are
/// [B, H, T, ...] of one shape (the two parts of a chunkwise output), summed and scaled in their dtype.
at::Tensor from_head_major(const at::Tensor& a_BHT_, const at::Tensor& b_BHT_, double scale,
                           at::ScalarType dtype);

/// Whether from_head_major on these tensors runs the CUDA kernel: CUDA float32 a and b to float32, bfloat16
/// or float16.
bool from_head_major_uses_cuda_kernel(const at::Tensor& a_BHT_, const at::Tensor& b_BHT_,
                                      at::ScalarType dtype);

}  // namespace dla::ops
