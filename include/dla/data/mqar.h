// Multi-query associative recall (Zoology's MQAR): key-value pairs, then queries of the keys whose next
// token must be the value. A built-in synthetic task that needs no files.
// Shapes: B batch, L sequence length.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dla/config/schema.h"

namespace dla::data {

struct MqarOptions {
  int64_t num_kv_pairs = 8;        ///< pairs per sequence; every key is queried once
  double power_a = 0.01;           ///< query gaps follow p(i) ∝ a·i^(a−1): small a favours short gaps
  bool random_non_queries = true;  ///< fill unused positions with random tokens instead of 0
  int64_t eval_examples = 1000;    ///< held-out sequences for the final accuracy

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("num_kv_pairs", num_kv_pairs, "Key-value pairs per sequence; each key is queried once.",
            Bounds::at_least(1));
    v.field("power_a", power_a, "Query gap distribution p(i) ∝ a·i^(a−1); 1 is uniform.",
            Bounds::between(1e-6, 1));
    v.field("random_non_queries", random_non_queries,
            "Fill positions that are neither pairs nor queries with random tokens.");
    v.field("eval_examples", eval_examples, "Held-out sequences scored at the end of training.",
            Bounds::at_least(1));
  }
};

/// A batch of MQAR sequences: input ids [B,L] (int64) and labels [B,L] (int64), where labels[b,t] is the
/// value that must follow the query key at t, and −100 (ignored) elsewhere.
struct MqarBatch {
  at::Tensor ids_BL;
  at::Tensor labels_BL;
};

/// Generates `batch` sequences of length `seq_len` over a vocabulary of `vocab_size` tokens,
/// deterministically from `seed`. Keys come from [1, V/2), values from [V/2, V). Requires vocab_size >
/// seq_len and 4·num_kv_pairs ≤ seq_len (checked; throws dla::UserError naming the keys).
MqarBatch generate_mqar(const MqarOptions& options, int64_t batch, int64_t seq_len, int64_t vocab_size,
                        uint64_t seed);

}  // namespace dla::data
