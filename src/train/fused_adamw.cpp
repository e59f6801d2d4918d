#include "dla/train/fused_adamw.h"

#include <map>

#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/GradMode.h>

namespace dla::train {
namespace {

using torch::optim::AdamWOptions;
using torch::optim::AdamWParamState;

/// Whether the fused kernel takes these parameters: dense float32 with gradients of the same kind, all on
/// the parameters' first device.
bool fused_kernel_takes(const std::vector<at::Tensor>& params) {
  if (params.empty()) return true;
  for (const at::Tensor& p : params) {
    const at::Tensor& g = p.grad();
    if (p.scalar_type() != at::kFloat || p.is_sparse() || g.scalar_type() != at::kFloat || g.is_sparse() ||
        p.device() != params.front().device() || g.device() != p.device())
      return false;
  }
  return true;
}

}  // namespace

at::Tensor FusedAdamW::step(LossClosure closure) {
  // Parameters with a gradient, per group; LibTorch's step runs instead where the kernel does not apply.
  std::vector<std::vector<at::Tensor>> updated;
  for (const torch::optim::OptimizerParamGroup& group : param_groups()) {
    std::vector<at::Tensor> params;
    for (const at::Tensor& p : group.params()) {
      if (p.grad().defined()) params.push_back(p);
    }
    if (static_cast<const AdamWOptions&>(group.options()).amsgrad() || !fused_kernel_takes(params)) {
      last_step_fused_ = false;
      return torch::optim::AdamW::step(closure);
    }
    updated.push_back(std::move(params));
  }
  last_step_fused_ = true;
  at::Tensor loss;
  if (closure != nullptr) {
    const at::AutoGradMode grad_mode(true);
    loss = closure();
  }
  const at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < updated.size(); ++i) {
    const auto& options = static_cast<const AdamWOptions&>(param_groups()[i].options());
    const std::vector<at::Tensor>& params = updated[i];
    if (params.empty()) continue;
    std::vector<at::Tensor> grads, exp_avgs, exp_avg_sqs, steps;
    // The kernel reads each parameter's step count (for the bias corrections) from a device scalar; the
    // parameters of a group normally share one count, so one scalar serves them all.
    std::map<int64_t, at::Tensor> step_scalars;
    for (const at::Tensor& p : params) {
      auto found = state_.find(p.unsafeGetTensorImpl());
      if (found == state_.end()) {
        auto fresh = std::make_unique<AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        fresh->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        found = state_.emplace(p.unsafeGetTensorImpl(), std::move(fresh)).first;
      }
      auto& state = static_cast<AdamWParamState&>(*found->second);
      state.step(state.step() + 1);
      auto scalar = step_scalars.find(state.step());
      if (scalar == step_scalars.end()) {
        scalar = step_scalars
                     .emplace(state.step(),
                              at::full({}, static_cast<double>(state.step()), p.options().dtype(at::kFloat)))
                     .first;
      }
      grads.push_back(p.grad());
      exp_avgs.push_back(state.exp_avg());
      exp_avg_sqs.push_back(state.exp_avg_sq());
      steps.push_back(scalar->second);
    }
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, options.lr(),
                      std::get<0>(options.betas()), std::get<1>(options.betas()), options.weight_decay(),
                      options.eps(), /*amsgrad=*/false, /*maximize=*/false);
  }
  return loss;
}

}  // namespace dla::train
