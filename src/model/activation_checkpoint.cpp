// The checkpointed block as an autograd function: forward without a graph, then in the backward a second,
// recorded forward and a nested backward through it.
// Shapes: B batch, T tokens, D model dim.
#include "dla/model/activation_checkpoint.h"

#include <cstdint>

#include <ATen/autocast_mode.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/model/causal_lm.h"

namespace dla::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The CUDA autocast setting of the first forward, restored for the recomputation (the backward runs on
/// another thread, whose thread-local autocast state is off). The cast cache stays off meanwhile: cached
/// casts of the weights would outlive this step's optimiser update.
class AutocastScope {
 public:
  AutocastScope(bool enabled, at::ScalarType dtype)
      : enabled_(at::autocast::is_autocast_enabled(at::kCUDA)),
        dtype_(at::autocast::get_autocast_dtype(at::kCUDA)),
        cache_enabled_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_enabled(at::kCUDA, enabled);
    at::autocast::set_autocast_dtype(at::kCUDA, dtype);
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastScope() {
    at::autocast::set_autocast_enabled(at::kCUDA, enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, dtype_);
    at::autocast::set_autocast_cache_enabled(cache_enabled_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  at::ScalarType dtype_;
  bool cache_enabled_;
};

BlockImpl& block_of(AutogradContext* ctx) {
  return *reinterpret_cast<BlockImpl*>(static_cast<std::intptr_t>(ctx->saved_data["block"].toInt()));
}

class BlockCheckpoint : public torch::autograd::Function<BlockCheckpoint> {
 public:
  /// Returns {h, auxiliary loss or a float32 zero}.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h_BTD, BlockImpl* block) {
    // The module is not a tensor, so the context holds its address; the model outlives its graphs.
    ctx->saved_data["block"] = static_cast<int64_t>(reinterpret_cast<std::intptr_t>(block));
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(at::kCUDA);
    ctx->saved_data["autocast_dtype"] = at::autocast::get_autocast_dtype(at::kCUDA);
    ctx->save_for_backward({h_BTD});
    const at::Tensor out_BTD = block->forward(h_BTD);
    const at::Tensor auxiliary = block->mixer->memory->auxiliary_loss();
    ctx->saved_data["has_auxiliary"] = auxiliary.defined();
    return {out_BTD, auxiliary.defined() ? auxiliary : at::zeros({}, h_BTD.options().dtype(at::kFloat))};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor h_BTD = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    BlockImpl& block = block_of(ctx);
    at::Tensor out_BTD, auxiliary;
    {
      const at::AutoGradMode record(true);
      const AutocastScope autocast(ctx->saved_data["autocast"].toBool(),
                                   ctx->saved_data["autocast_dtype"].toScalarType());
      out_BTD = block.forward(h_BTD);
      auxiliary = block.mixer->memory->auxiliary_loss();
    }
    variable_list outputs{out_BTD};
    variable_list grads{grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(out_BTD)};
    if (ctx->saved_data["has_auxiliary"].toBool() && auxiliary.defined() && grad_outputs[1].defined()) {
      outputs.push_back(auxiliary);
      grads.push_back(grad_outputs[1].to(auxiliary.scalar_type()));
    }
    torch::autograd::backward(outputs, grads);
    return {h_BTD.grad(), at::Tensor()};
  }
};

}  // namespace

CheckpointedBlockOutput checkpointed_block_forward(BlockImpl& block, const at::Tensor& h_BTD) {
  const variable_list out = BlockCheckpoint::apply(h_BTD, &block);
  return {out[0], block.mixer->memory->auxiliary_loss().defined() ? out[1] : at::Tensor()};
}

}  // namespace dla::model
