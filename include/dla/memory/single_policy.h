// The `single` policy: one state per head, the plain backbone (no λ, no extra parameters).
// Shapes: B batch, T tokens, D model dim, H heads, K key dim, V value dim.
#pragma once

#include "dla/memory/policy.h"

namespace dla::memory {

class SinglePolicyImpl : public MemoryPolicyImpl {
 public:
  at::Tensor forward(const at::Tensor& x_BTD, const Recurrence& terms, int64_t chunk_size,
                     std::unique_ptr<MemoryState>* state = nullptr) override;
};

}  // namespace dla::memory
