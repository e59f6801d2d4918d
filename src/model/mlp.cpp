// SwiGLU feed-forward block.
#include "dla/model/mlp.h"

#include <ATen/ATen.h>

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
  return down_proj->forward(at::silu(gate_proj->forward(x_D)) * up_proj->forward(x_D));
}

}  // namespace dla::model
