// SwiGLU feed-forward block with fla's names: down_proj(silu(gate_proj(x)) · up_proj(x)), no biases.
// Shapes: D model dim, F intermediate dim.
#pragma once

#include <torch/nn/modules/linear.h>

namespace dla::model {

class GatedMlpImpl : public torch::nn::Module {
 public:
  GatedMlpImpl(int64_t hidden_size, int64_t intermediate_size);
  at::Tensor forward(const at::Tensor& x_D);

  torch::nn::Linear gate_proj{nullptr};  ///< [F, D]
  torch::nn::Linear up_proj{nullptr};    ///< [F, D]
  torch::nn::Linear down_proj{nullptr};  ///< [D, F]
};
TORCH_MODULE(GatedMlp);

}  // namespace dla::model
