// What the multi-state policies (fenwick, dla) share: the level scales λ = softplus(L ⊙ l_proj(x)) (spec §1),
// their memory for decoding, and the dispatch to the chunkwise and recurrent forms. A subclass only says
// which segments the tokens form. Shapes: B batch, T tokens, D model dim, H heads, NL levels, S slots,
// K key dim, V value dim, Q queries.
#pragma once

#include <torch/nn/modules/linear.h>

#include "dla/memory/policy.h"

namespace dla::memory {

/// The decoding memory of a multi-state policy: the slot states and the next token's position.
struct MultiStateMemory : MemoryState {
  at::Tensor states_BHSKV;
  int64_t position = 0;
  int64_t size_bytes() const override {
    return states_BHSKV.numel() * static_cast<int64_t>(states_BHSKV.element_size());
  }
};

class MultiStatePolicyImpl : public MemoryPolicyImpl {
 public:
  MultiStatePolicyImpl(int64_t hidden_size, int64_t num_heads, int64_t num_levels);
  at::Tensor forward(const at::Tensor& x_BTD, const Recurrence& terms, int64_t chunk_size,
                     std::unique_ptr<MemoryState>* state = nullptr) override;

  /// λ_BTHL of the tokens x_BTD, float32.
  at::Tensor level_scales(const at::Tensor& x_BTD);

  torch::nn::Linear l_proj{nullptr};  ///< W_λ: D -> H·NL, no bias
  at::Tensor L;                       ///< [H, NL], initialised to 1, no weight decay

 protected:
  /// The segment table (rows for queries p..p + T, p = memory's position or 0) and the confidences
  /// (undefined for 1) of the tokens x_BTD. `memory` is null in training; otherwise the policy advances
  /// its part of it over the tokens.
  struct Segmentation {
    SegmentTable segments;
    at::Tensor conf_BHQS;
  };
  virtual Segmentation segment(const at::Tensor& x_BTD, MultiStateMemory* memory) = 0;
  /// A fresh decoding memory (a subclass may keep more in it).
  virtual std::unique_ptr<MultiStateMemory> new_memory() const {
    return std::make_unique<MultiStateMemory>();
  }

  int64_t num_heads_, num_levels_;
};

}  // namespace dla::memory
