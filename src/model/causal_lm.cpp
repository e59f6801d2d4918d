// The causal language model and its initialisation.
// Shapes: B batch, T tokens, D model dim, V vocabulary.
#include "dla/model/causal_lm.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include "dla/model/activation_checkpoint.h"
#include "dla/ops/cross_entropy.h"

namespace dla::model {

BlockImpl::BlockImpl(const ModelOptions& options) {
  mixer_norm = register_module("mixer_norm", RMSNorm(options.hidden_size, options.norm_eps));
  if (options.mixer == MixerKind::gdn) {
    mixer = register_module(
        "mixer", std::make_shared<GatedDeltaNetImpl>(options.hidden_size, options.gdn, options.norm_eps,
                                                     options.chunk_size, options.memory));
  } else {
    mixer = register_module(
        "mixer", std::make_shared<Mamba2Impl>(options.hidden_size, options.mamba2, options.norm_eps,
                                              options.chunk_size, options.memory));
  }
  if (options.use_mlp) {
    mlp_norm = register_module("mlp_norm", RMSNorm(options.hidden_size, options.norm_eps));
    mlp = register_module("mlp", GatedMlp(options.hidden_size, options.mlp_intermediate_size()));
  }
}

at::Tensor BlockImpl::forward(const at::Tensor& h_BTD, MixerCache* cache) {
  at::Tensor h = h_BTD + mixer->forward(mixer_norm->forward(h_BTD), cache);
  if (mlp) h = h + mlp->forward(mlp_norm->forward(h));
  return h;
}

CausalLMImpl::CausalLMImpl(const ModelOptions& options) : options_(options) {
  options.validate();
  embeddings = register_module("embeddings", torch::nn::Embedding(options.vocab_size, options.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers; ++i)
    layers->push_back(Block(options));
  norm = register_module("norm", RMSNorm(options.hidden_size, options.norm_eps));
  if (!options.tie_embeddings) {
    lm_head = register_module(
        "lm_head",
        torch::nn::Linear(torch::nn::LinearOptions(options.hidden_size, options.vocab_size).bias(false)));
  }
  reset_parameters();
}

void CausalLMImpl::reset_parameters() {
  at::NoGradGuard no_grad;
  const double std = options_.initializer_range;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* linear = module->as<torch::nn::Linear>()) {
      linear->weight.normal_(0, std);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* conv = module->as<torch::nn::Conv1d>()) {
      conv->weight.normal_(0, std);
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* embedding = module->as<torch::nn::Embedding>()) {
      embedding->weight.normal_(0, std);
    } else if (auto* rms = module->as<RMSNorm>()) {
      rms->weight.fill_(1.0);
    } else if (auto* gated = module->as<GatedRMSNorm>()) {
      gated->weight.fill_(1.0);
    }
  }
  for (const auto& layer : *layers) {
    auto& block = *layer->as<Block>();
    block.mixer->reset_gate_parameters();
    // fla's Mamba-2 model rescales the residual-branch output projection (rescale_prenorm_residual).
    if (auto* mamba = dynamic_cast<Mamba2Impl*>(block.mixer.get())) {
      torch::nn::init::kaiming_uniform_(mamba->out_proj->weight, /*a=*/std::sqrt(5.0));
      mamba->out_proj->weight.div_(std::sqrt(static_cast<double>(options_.num_layers)));
    }
  }
}

int64_t CausalLMImpl::num_parameters() const {
  int64_t total = 0;
  for (const auto& p : parameters())
    total += p.numel();
  return total;
}

at::Tensor CausalLMImpl::forward(const at::Tensor& ids_BT, GenerationCache* cache) {
  if (cache != nullptr) cache->layers.resize(layers->size());
  at::Tensor h_BTD = embeddings->forward(ids_BT);
  last_forward_checkpointed_ =
      activation_checkpointing_ && cache == nullptr && is_training() && at::GradMode::is_enabled();
  checkpointed_auxiliary_loss_ = at::Tensor();
  for (std::size_t i = 0; i < layers->size(); ++i) {
    BlockImpl& block = *layers[i]->as<Block>();
    if (!last_forward_checkpointed_) {
      h_BTD = block.forward(h_BTD, cache != nullptr ? &cache->layers[i] : nullptr);
      continue;
    }
    // The blocks' memories keep graph-less auxiliary losses here; the differentiable ones come back with h.
    const CheckpointedBlockOutput out = checkpointed_block_forward(block, h_BTD);
    h_BTD = out.h_BTD;
    if (out.auxiliary_loss.defined()) {
      checkpointed_auxiliary_loss_ = checkpointed_auxiliary_loss_.defined()
                                         ? checkpointed_auxiliary_loss_ + out.auxiliary_loss
                                         : out.auxiliary_loss;
    }
  }
  if (cache != nullptr) cache->position += ids_BT.size(1);
  h_BTD = norm->forward(h_BTD);
  return lm_head ? lm_head->forward(h_BTD) : at::linear(h_BTD, embeddings->weight);
}

at::Tensor CausalLMImpl::auxiliary_loss() const {
  if (last_forward_checkpointed_) return checkpointed_auxiliary_loss_;
  at::Tensor total;
  for (const auto& layer : *layers) {
    const at::Tensor loss = layer->as<Block>()->mixer->memory->auxiliary_loss();
    if (loss.defined()) total = total.defined() ? total + loss : loss;
  }
  return total;
}

int64_t GenerationCache::size_bytes() const {
  int64_t bytes = 0;
  for (const MixerCache& layer : layers)
    bytes += layer.size_bytes();
  return bytes;
}

at::Tensor next_token_loss(const at::Tensor& logits_BTV, const at::Tensor& ids_BT) {
  const int64_t B = logits_BTV.size(0), T = logits_BTV.size(1), V = logits_BTV.size(2);
  TORCH_CHECK(T >= 2, "next_token_loss needs at least 2 tokens, got ", T);
  // Every position but the last predicts the next token; the last is ignored rather than cut off, so the
  // logits are read in place instead of copied without their last row.
  const at::Tensor labels_BT =
      at::cat({ids_BT.narrow(1, 1, T - 1), at::full({B, 1}, ops::kIgnoreLabel, ids_BT.options())}, 1);
  return ops::cross_entropy(logits_BTV.reshape({-1, V}), labels_BT.reshape({-1}));
}

}  // namespace dla::model
