// The short causal depthwise convolution of GDN and Mamba-2 with its SiLU, as one op. On CUDA (float32 or
// bfloat16 inputs) it is one kernel per direction that reads and writes the [B, T, C] layout the projections
// produce; elsewhere, and under DLA_KERNELS=aten, LibTorch's grouped conv1d and silu, which autograd
// differentiates. Shapes: B batch, T tokens, C channels, W convolution width.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::ops {

/// y[b, t, c] = silu(bias[c] + Σ_j weight[c, j] · x[b, t − (W − 1) + j, c]), with zeros before the first
/// token. x [B, T, C] (the kernel takes any batch and token strides, channels adjacent), weight [C, W], bias
/// [C] or undefined. Returns [B, T, C] in x's dtype; the kernel computes in float32.
at::Tensor causal_conv1d_silu(const at::Tensor& x_BTC, const at::Tensor& weight_CW, const at::Tensor& bias_C);

/// Whether causal_conv1d_silu on these tensors runs the CUDA kernels.
bool causal_conv_uses_cuda_kernel(const at::Tensor& x_BTC, const at::Tensor& weight_CW,
                                  const at::Tensor& bias_C);

}  // namespace dla::ops
