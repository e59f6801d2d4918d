// The `fenwick` policy: log-linear attention's fixed Fenwick buckets, level(t, s) = bit_length(t XOR s)
// (spec §1), with ceil(log2 max_length) + 1 levels. Decoding memory grows as log2 of the position.
#pragma once

#include <map>

#include "dla/memory/multi_state_policy.h"

namespace dla::memory {

class FenwickPolicyImpl : public MultiStatePolicyImpl {
 public:
  FenwickPolicyImpl(const MemoryOptions& options, int64_t hidden_size, int64_t num_heads);

 protected:
  Segmentation segment(const at::Tensor& x_BTD, MultiStateMemory* memory) override;

 private:
  int64_t max_length_;
  std::map<int64_t, SegmentTable> tables_;  ///< training tables by sequence length, on the last device used
};

}  // namespace dla::memory
