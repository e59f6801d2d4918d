// The sequence-mixer interface shared by the backbones (Gated DeltaNet, Mamba-2). A block holds one mixer and
// does not know which; a mixer hands its recurrence to its memory policy and does not know which.
// Shapes: B batch, T tokens, D model dim, C channels, W convolution width.
#pragma once

#include <memory>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>

#include "dla/memory/policy.h"

namespace dla::model {

/// What a mixer keeps between decoding steps: the tails of its short convolutions and its memory.
struct MixerCache {
  std::vector<at::Tensor> conv_tails;  ///< per convolution, its last W − 1 inputs [B, W − 1, C]
  std::unique_ptr<memory::MemoryState> memory;
  bool empty() const { return !memory; }
  int64_t size_bytes() const;
};

class MixerImpl : public torch::nn::Module {
 public:
  /// x [B,T,D] -> [B,T,D], causal. With a cache: an empty one is filled by this call (prefill from token 0),
  /// a filled one is continued and updated (decoding).
  virtual at::Tensor forward(const at::Tensor& x_BTD, MixerCache* cache = nullptr) = 0;
  /// Re-draws the mixer's own parameters the way fla's model `_init_weights` does for this layer type
  /// (Linear and Conv weights are drawn by the model; this covers gates, decays and skips).
  virtual void reset_gate_parameters() = 0;

  /// The memory policy, registered as the submodule `memory` by each mixer.
  std::shared_ptr<memory::MemoryPolicyImpl> memory;
};

/// The short causal depthwise convolution of GDN and Mamba-2, followed by SiLU: x [B,T,C] -> [B,T,C]. With a
/// tail (its last W − 1 inputs, see MixerCache) the convolution continues from it, and the tail is updated;
/// an undefined tail means zeros before the first token.
at::Tensor causal_conv_silu(const at::Tensor& x_BTC, torch::nn::Conv1d& conv, at::Tensor* tail_BWC = nullptr);

}  // namespace dla::model
