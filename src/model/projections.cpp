// model::project_together: the stacked-weight GEMM and its split.
#include "dla/model/projections.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/linear.h>
#include <c10/util/Exception.h>

namespace dla::model {

std::vector<at::Tensor> project_together(const at::Tensor& x_D,
                                         const std::vector<torch::nn::Linear>& layers) {
  std::vector<at::Tensor> weights;
  std::vector<int64_t> widths;
  for (const auto& layer : layers) {
    TORCH_CHECK(!layer->bias.defined(), "project_together: the layers must be bias-free");
    TORCH_CHECK(layer->weight.size(1) == x_D.size(-1), "project_together: a layer takes ",
                layer->weight.size(1), " inputs, x has ", x_D.size(-1));
    weights.push_back(layer->weight);
    widths.push_back(layer->weight.size(0));
  }
  return at::linear(x_D, at::cat(weights, /*dim=*/0)).split_with_sizes(widths, /*dim=*/-1);
}

}  // namespace dla::model
