// The causal language model: embedding, pre-norm residual blocks (mixer, optional SwiGLU MLP), final
// norm, LM head. Parameter names are dla's own (`layers.0.mixer.q_proj.weight`); checkpoint/fla_names
// maps them to and from flash-linear-attention's.
// Shapes: B batch, T tokens, D model dim, V vocabulary.
#pragma once

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "dla/model/gdn.h"
#include "dla/model/mamba2.h"
#include "dla/model/mlp.h"
#include "dla/model/norm.h"
#include "dla/model/options.h"

namespace dla::model {

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelOptions& options);
  at::Tensor forward(const at::Tensor& h_BTD, MixerCache* cache = nullptr);

  RMSNorm mixer_norm{nullptr};
  std::shared_ptr<MixerImpl> mixer;
  RMSNorm mlp_norm{nullptr};  ///< with use_mlp
  GatedMlp mlp{nullptr};      ///< with use_mlp
};
TORCH_MODULE(Block);

/// Everything a model keeps between decoding steps: one mixer cache per layer.
struct GenerationCache {
  std::vector<MixerCache> layers;
  int64_t position = 0;  ///< tokens seen
  int64_t size_bytes() const;
};

class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(const ModelOptions& options);
  /// ids [B,T] int64 -> logits [B,T,V]. With a cache: an empty one is filled (chunkwise prefill), a
  /// filled one is continued token by token (recurrent decoding) and updated.
  at::Tensor forward(const at::Tensor& ids_BT, GenerationCache* cache = nullptr);
  /// The sum of the layers' auxiliary losses of the last training forward (dla's ratio loss); undefined
  /// when there is none.
  at::Tensor auxiliary_loss() const;
  /// With it on, training forwards (grad mode on, no cache) checkpoint every block: activations are
  /// recomputed in the backward pass (dla/model/activation_checkpoint.h).
  void set_activation_checkpointing(bool on) { activation_checkpointing_ = on; }
  /// Draws every parameter as fla's `_init_weights` does, from the current torch seed.
  void reset_parameters();
  int64_t num_parameters() const;
  const ModelOptions& options() const { return options_; }

  torch::nn::Embedding embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  ///< absent (nullptr) with tie_embeddings

 private:
  ModelOptions options_;
  bool activation_checkpointing_ = false;
  bool last_forward_checkpointed_ = false;
  at::Tensor checkpointed_auxiliary_loss_;  ///< of the last forward, when it was checkpointed
};
TORCH_MODULE(CausalLM);

/// Mean next-token cross-entropy (natural log): position t predicts ids[t+1], as fla shifts labels.
at::Tensor next_token_loss(const at::Tensor& logits_BTV, const at::Tensor& ids_BT);

}  // namespace dla::model
