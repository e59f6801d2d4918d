// Normalisation layers with flash-linear-attention's parameter names and arithmetic (fp32 inside).
// Shapes: D normalised dim, ... any leading dims.
#pragma once

#include <torch/nn/module.h>

namespace dla::model {

/// y = x · rsqrt(mean(x²) + eps) · weight, computed in float32, returned in x's dtype.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x_D);

  at::Tensor weight;  ///< [D], initialised to ones

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

/// RMS normalisation gated by SiLU(z), over groups of `group_size` channels.
/// GDN's o_norm normalises then gates: rms(x)·w·silu(z). Mamba-2's norm gates then normalises:
/// rms(x·silu(z))·w (fla's norm_before_gate = False). An undefined z means no gate (plain RMSNorm).
class GatedRMSNormImpl : public torch::nn::Module {
 public:
  GatedRMSNormImpl(int64_t dim, double eps, bool gate_before_norm, int64_t group_size = 0);
  at::Tensor forward(const at::Tensor& x_D, const at::Tensor& z_D);

  at::Tensor weight;  ///< [D], initialised to ones

 private:
  double eps_;
  bool gate_before_norm_;
  int64_t group_size_;  ///< 0 means the whole dim
};
TORCH_MODULE(GatedRMSNorm);

}  // namespace dla::model
