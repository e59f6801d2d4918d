// AdamW whose update is ATen's fused multi-tensor kernel: one pass over each parameter group's parameters,
// gradients and moments instead of about ten elementwise kernels per parameter. It keeps LibTorch's AdamW
// state (step, exp_avg, exp_avg_sq per parameter), so checkpoints and everything that reads the state see no
// difference.
#pragma once

#include <vector>

#include <torch/optim/adamw.h>

namespace dla::train {

class FusedAdamW : public torch::optim::AdamW {
 public:
  explicit FusedAdamW(const std::vector<torch::optim::OptimizerParamGroup>& groups)
      : torch::optim::AdamW(groups) {}
  FusedAdamW(std::vector<at::Tensor> params, const torch::optim::AdamWOptions& options)
      : torch::optim::AdamW(std::move(params), options) {}

  /// The AdamW update of every parameter with a gradient: the fused kernel when every group's parameters and
  /// gradients are dense float32 tensors on one device and amsgrad is off, else LibTorch's AdamW step. The
  /// closure, if any, is called first and its loss returned.
  at::Tensor step(LossClosure closure = nullptr) override;

  /// Whether the last step ran the fused kernel.
  bool last_step_fused() const { return last_step_fused_; }

 private:
  bool last_step_fused_ = false;
};

}  // namespace dla::train
