// The Fenwick policy's segment tables.
// Shapes: B batch, T tokens, D model dim.
#include "dla/memory/fenwick_policy.h"

#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::memory {

FenwickPolicyImpl::FenwickPolicyImpl(const MemoryOptions& options, int64_t hidden_size, int64_t num_heads)
    : MultiStatePolicyImpl(hidden_size, num_heads, options.num_levels()), max_length_(options.max_length) {}

MultiStatePolicyImpl::Segmentation FenwickPolicyImpl::segment(const at::Tensor& x_BTD,
                                                              MultiStateMemory* memory) {
  const int64_t first = memory != nullptr ? memory->position : 0;
  const int64_t last = first + x_BTD.size(1);
  if (last > max_length_) {
    throw UserError(
        fmt::format("the fenwick memory holds at most model.memory.max_length = {} tokens, got a "
                    "sequence of {}; raise model.memory.max_length",
                    max_length_, last));
  }
  if (first == 0) {
    auto found = tables_.find(last);
    if (found == tables_.end() || found->second.start_BHQS.device() != x_BTD.device()) {
      found =
          tables_.insert_or_assign(last, on_device(fenwick_segments(last, num_levels_ - 1), x_BTD.device()))
              .first;
    }
    return {found->second, at::Tensor()};
  }
  return {on_device(fenwick_segments(last, num_levels_ - 1, first), x_BTD.device()), at::Tensor()};
}

}  // namespace dla::memory
