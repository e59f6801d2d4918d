// Small models for the evaluation tests, among them one whose every prediction is the uniform distribution
// (all weights zero), so each token's log-likelihood is −ln V and every metric can be computed by hand.
#pragma once

#include "dla/model/causal_lm.h"

namespace dla::test {

/// A GDN of `layers` layers, hidden 16, fast enough for scoring tests.
inline model::ModelOptions small_model_options(int64_t vocab_size, int64_t layers) {
  model::ModelOptions options;
  options.vocab_size = vocab_size;
  options.hidden_size = 16;
  options.num_layers = layers;
  options.gdn.num_heads = 2;
  options.gdn.head_dim = 8;
  options.intermediate_size = 32;
  options.chunk_size = 16;
  return options;
}

inline model::CausalLM uniform_model(int64_t vocab_size) {
  model::CausalLM model(small_model_options(vocab_size, 1));
  at::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    p.zero_();
  return model;
}

}  // namespace dla::test
