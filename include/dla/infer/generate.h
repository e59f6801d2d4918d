// Text generation from token ids: a chunkwise prefill of the prompt that fills the model's recurrent caches,
// then one recurrent step per new token. Greedy or sampled (temperature, top-k), seeded.
// Shapes: B batch, T tokens, V vocabulary.
#pragma once

#include <cstdint>
#include <vector>

#include "dla/model/causal_lm.h"

namespace dla::infer {

struct SamplingOptions {
  double temperature = 0.0;  ///< 0: greedy (argmax); else softmax(logits / temperature)
  int64_t top_k = 0;         ///< > 0: sample among the k most likely tokens only
  uint64_t seed = 0;
};

struct Generation {
  std::vector<int64_t> tokens;  ///< the new tokens, without the prompt
  int64_t cache_bytes = 0;      ///< the recurrent caches after the last step
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

/// Generates max_new tokens after `prompt` (at least one token) with `model` on its device, in eval mode and
/// without gradients.
Generation generate(model::CausalLMImpl& model, const std::vector<int64_t>& prompt, int64_t max_new,
                    const SamplingOptions& sampling);

}  // namespace dla::infer
