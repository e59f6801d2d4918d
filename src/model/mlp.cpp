// SwiGLU feed-forward block.
#include "dla/model/mlp.h"

#include <ATen/ATen.h>

#include "dla/model/projections.h"

namespace dla::model {

GatedMlpImpl::GatedMlpImpl(int64_t hidden_size, int64_t intermediate_size) {
  auto linear = [&](const char* name, int64_t in, int64_t out) {
    return register_module(name, torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)));
  };
  gate_proj = linear("gate_proj", hidden_size, intermediate_size);
  up_proj = linear("up_proj", hidden_size, intermediate_size);
  down_proj = linear("down_proj", intermediate_size, hidden_size);
}

at::Tensor GatedMlpImpl::forward(const at::Tensor& x_D) {
  const std::vector<at::Tensor> gate_and_up = project_together(x_D, {gate_proj, up_proj});
  return down_proj->forward(at::silu(gate_and_up[0]) * gate_and_up[1]);
}

}  // namespace dla::model
