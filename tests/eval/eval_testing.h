// A model whose every prediction is the uniform distribution (all weights zero), so each token's
// log-likelihood is −ln V and every metric can be computed by hand.
#pragma once

#include "dla/model/causal_lm.h"

namespace dla::test {

inline model::CausalLM uniform_model(int64_t vocab_size) {
  model::ModelOptions options;
  options.vocab_size = vocab_size;
  options.hidden_size = 16;
  options.num_layers = 1;
  options.gdn.num_heads = 1;
  options.gdn.head_dim = 16;
  options.intermediate_size = 32;
  options.chunk_size = 16;
  model::CausalLM model(options);
  at::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    p.zero_();
  return model;
}

}  // namespace dla::test
