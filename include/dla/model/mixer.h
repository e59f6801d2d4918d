// The sequence-mixer interface shared by the backbones (Gated DeltaNet, Mamba-2). A block holds one
// mixer and does not know which.
// Shapes: B batch, T tokens, D model dim.
#pragma once

#include <torch/nn/module.h>

namespace dla::model {

class MixerImpl : public torch::nn::Module {
 public:
  /// x [B,T,D] -> [B,T,D], causal.
  virtual at::Tensor forward(const at::Tensor& x_BTD) = 0;
  /// Re-draws the mixer's own parameters the way fla's model `_init_weights` does for this layer type
  /// (Linear and Conv weights are drawn by the model; this covers gates, decays and skips).
  virtual void reset_gate_parameters() = 0;
};

}  // namespace dla::model
