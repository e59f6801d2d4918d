// The memory-policy factory: the one place that knows every policy.
#include "dla/memory/policy.h"

#include "dla/memory/dla_policy.h"
#include "dla/memory/fenwick_policy.h"
#include "dla/memory/single_policy.h"

namespace dla::memory {

std::shared_ptr<MemoryPolicyImpl> make_memory_policy(const MemoryOptions& options, int64_t hidden_size,
                                                     int64_t num_heads) {
  switch (options.policy) {
    case PolicyKind::fenwick:
      return std::make_shared<FenwickPolicyImpl>(options, hidden_size, num_heads);
    case PolicyKind::dla:
      return std::make_shared<DlaPolicyImpl>(options, hidden_size, num_heads);
    case PolicyKind::single:
      break;
  }
  return std::make_shared<SinglePolicyImpl>();
}

}  // namespace dla::memory
