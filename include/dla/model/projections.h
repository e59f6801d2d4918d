// Several bias-free linear layers applied to one input as one GEMM over their stacked weights. Under
// autocast the input is cast to 16 bits once instead of once per layer, its gradient comes back as one tensor
// instead of one per layer to be cast and summed, and one large GEMM replaces several small ones. The layers
// keep their own parameters (names, checkpoints and initialisation are unchanged).
// Shapes: D the input dim, O_i the output dim of layer i.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/linear.h>

namespace dla::model {

/// [layer_i(x_D) for each layer], each [..., O_i]: views into one [..., Σ O_i] product, the token rows of
/// each Σ O_i floats apart. Every layer must be bias-free and take x's last dim.
std::vector<at::Tensor> project_together(const at::Tensor& x_D, const std::vector<torch::nn::Linear>& layers);

}  // namespace dla::model
