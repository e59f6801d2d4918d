// Level scales and the dispatch to the forms of multi-state linear attention.
// Shapes: B batch, T tokens, D model dim, H heads, NL levels.
#include "dla/memory/multi_state_policy.h"

#include <ATen/ATen.h>

namespace dla::memory {

MultiStatePolicyImpl::MultiStatePolicyImpl(int64_t hidden_size, int64_t num_heads, int64_t num_levels)
    : num_heads_(num_heads), num_levels_(num_levels) {
  l_proj = register_module(
      "l_proj", torch::nn::Linear(torch::nn::LinearOptions(hidden_size, num_heads * num_levels).bias(false)));
  L = register_parameter("L", at::ones({num_heads, num_levels}));
}

at::Tensor MultiStatePolicyImpl::level_scales(const at::Tensor& x_BTD) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  const at::Tensor logits_BTHL = l_proj->forward(x_BTD).to(at::kFloat).view({B, T, num_heads_, num_levels_});
  return at::softplus(L.to(at::kFloat) * logits_BTHL);
}

at::Tensor MultiStatePolicyImpl::forward(const at::Tensor& x_BTD, const Recurrence& terms, int64_t chunk_size,
                                         std::unique_ptr<MemoryState>* state) {
  const at::Tensor lam_BTHL = level_scales(x_BTD);
  if (state == nullptr) {
    const Segmentation seg = segment(x_BTD, nullptr);
    return chunkwise(terms, {lam_BTHL, seg.conf_BHQS}, seg.segments, chunk_size).out_BTHV;
  }
  if (!*state) {
    std::unique_ptr<MultiStateMemory> memory = new_memory();
    const Segmentation seg = segment(x_BTD, memory.get());
    MultiStateResult result = chunkwise(terms, {lam_BTHL, seg.conf_BHQS}, seg.segments, chunk_size);
    memory->states_BHSKV = result.states_BHSKV;
    memory->position = x_BTD.size(1);
    *state = std::move(memory);
    return result.out_BTHV;
  }
  auto& memory = dynamic_cast<MultiStateMemory&>(**state);
  const Segmentation seg = segment(x_BTD, &memory);
  // Decoding reads confidences at their forward value 1.
  MultiStateResult result =
      recurrent(terms, {lam_BTHL, at::Tensor()}, seg.segments, memory.states_BHSKV, memory.position);
  memory.states_BHSKV = result.states_BHSKV;
  memory.position += x_BTD.size(1);
  return result.out_BTHV;
}

}  // namespace dla::memory
