// The single-state policy: the backbone's own chunkwise and recurrent ops.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim.
#include "dla/memory/single_policy.h"

#include "dla/ops/gdn.h"
#include "dla/ops/ssd.h"

namespace dla::memory {
namespace {

struct SingleMemory : MemoryState {
  at::Tensor state_BHKV;
  int64_t size_bytes() const override {
    return state_BHKV.numel() * static_cast<int64_t>(state_BHKV.element_size());
  }
};

ops::OpResult run(const Recurrence& terms, const at::Tensor& initial_state_BHKV, int64_t chunk_size,
                  bool recurrent) {
  if (terms.delta_rule()) {
    if (recurrent) {
      return ops::gdn::naive_recurrent(terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, terms.beta_BTH,
                                       terms.scale, initial_state_BHKV);
    }
    return ops::gdn::chunk(terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, terms.beta_BTH, terms.scale,
                           initial_state_BHKV, chunk_size);
  }
  if (recurrent) {
    return ops::ssd::naive_recurrent(terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, terms.scale,
                                     initial_state_BHKV);
  }
  return ops::ssd::chunk(terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, terms.scale,
                         initial_state_BHKV, chunk_size);
}

}  // namespace

at::Tensor SinglePolicyImpl::forward(const at::Tensor& /*x_BTD*/, const Recurrence& terms, int64_t chunk_size,
                                     std::unique_ptr<MemoryState>* state) {
  if (state == nullptr) return run(terms, {}, chunk_size, /*recurrent=*/false).out;
  if (!*state) {
    auto memory = std::make_unique<SingleMemory>();
    ops::OpResult result = run(terms, {}, chunk_size, /*recurrent=*/false);
    memory->state_BHKV = result.final_state;
    *state = std::move(memory);
    return result.out;
  }
  auto& memory = dynamic_cast<SingleMemory&>(**state);
  ops::OpResult result = run(terms, memory.state_BHKV, chunk_size, /*recurrent=*/true);
  memory.state_BHKV = result.final_state;
  return result.out;
}

}  // namespace dla::memory
