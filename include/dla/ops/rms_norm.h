// The normalisations of the models in one op: RMSNorm, the gated RMSNorm of GDN and Mamba-2, and the L2
// normalisation of GDN's queries and keys. On CUDA (float32 or bfloat16 inputs) it is one fused kernel per
// direction; elsewhere, and under DLA_KERNELS=aten, the composition of LibTorch ops that autograd
// differentiates. Shapes: D the last dim, split into groups of G channels normalised on their own.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace dla::ops {

struct RmsNormOptions {
  double eps = 1e-6;
  int64_t group_size = 0;         ///< G; 0 means the whole last dim
  bool mean = true;               ///< divide Σx² by G (RMS); false: by 1 (L2 normalisation)
  bool gate_before_norm = false;  ///< gate x before normalising (Mamba-2) instead of the output (GDN)
};

/// y = n·w [· silu(z)] with n = a · rsqrt(Σ_G a² / (G or 1) + eps) per group, a = x [· silu(z) when the gate
/// comes first]. weight [D] (float32) and z (x's shape) may be undefined. Computed in float32 (float64 for
/// float64 x), returned in x's dtype.
at::Tensor rms_norm(const at::Tensor& x_D, const at::Tensor& weight_D, const at::Tensor& z_D,
                    const RmsNormOptions& options);

/// Whether rms_norm on these tensors runs the fused CUDA kernels.
bool rms_norm_uses_cuda_kernel(const at::Tensor& x_D, const at::Tensor& weight_D, const at::Tensor& z_D,
                               const RmsNormOptions& options);

}  // namespace dla::ops
