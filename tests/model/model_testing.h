// A tiny model of either backbone under any memory policy, for tests that train a step or two on the CPU.
#pragma once

#include "dla/model/options.h"

namespace dla::test {

/// Vocabulary 50, hidden 16, 2 layers with MLPs, chunk 8; GDN 2 heads × 8, Mamba-2 heads of 8 with state 8;
/// dla with capacity 3 and its ratio loss on (weight 0.1), fenwick up to 32 tokens.
inline model::ModelOptions tiny_model_options(model::MixerKind mixer,
                                              memory::PolicyKind policy = memory::PolicyKind::single) {
  model::ModelOptions options;
  options.vocab_size = 50;
  options.hidden_size = 16;
  options.num_layers = 2;
  options.mixer = mixer;
  options.gdn.num_heads = 2;
  options.gdn.head_dim = 8;
  options.mamba2.head_dim = 8;
  options.mamba2.state_size = 8;
  options.intermediate_size = 32;
  options.chunk_size = 8;
  options.memory.policy = policy;
  options.memory.capacity = 3;
  options.memory.max_length = 32;
  options.memory.rate_loss = 0.1;
  return options;
}

}  // namespace dla::test
