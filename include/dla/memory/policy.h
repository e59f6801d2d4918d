// The memory-policy interface that both mixers (Gated DeltaNet, Mamba-2) hand their recurrence to, and the
// factory that builds a policy from `model.memory`. A mixer computes q, k, v and its gates; the policy
// decides which states are kept and how the output reads them. Adding a policy touches no mixer. Shapes: B
// batch, T tokens, D model dim, H heads, V value dim.
#pragma once

#include <cstdint>
#include <memory>

#include <torch/nn/module.h>

#include "dla/memory/multi_state.h"
#include "dla/memory/options.h"

namespace dla::memory {

/// What a policy keeps between decoding steps of one layer: constant in size for single and dla.
class MemoryState {
 public:
  virtual ~MemoryState() = default;
  /// Bytes held: the states and whatever else the policy needs to continue.
  virtual int64_t size_bytes() const = 0;
};

class MemoryPolicyImpl : public torch::nn::Module {
 public:
  /// The heads' outputs o_BTHV from the mixer input x_BTD (λ and scores are projections of it) and the
  /// backbone's recurrence terms. `state` null: the chunkwise training form. Pointing to an empty pointer:
  /// prefill from token 0 (chunkwise), leaving the memory for decoding there. Pointing to a memory: continue
  /// it token by token (the recurrent form), updating it.
  virtual at::Tensor forward(const at::Tensor& x_BTD, const Recurrence& terms, int64_t chunk_size,
                             std::unique_ptr<MemoryState>* state = nullptr) = 0;
  /// The auxiliary loss of the last training forward (dla's ratio loss), already weighted; undefined when
  /// there is none.
  virtual at::Tensor auxiliary_loss() const { return {}; }
};

/// The policy `options.policy` for a mixer with model dim hidden_size and num_heads state heads.
std::shared_ptr<MemoryPolicyImpl> make_memory_policy(const MemoryOptions& options, int64_t hidden_size,
                                                     int64_t num_heads);

}  // namespace dla::memory
