// generate_mqar: determinism, the layout of pairs and queries, the gap distribution, and size checks.
// Shapes: B batch, L sequence length.
#include "dla/data/mqar.h"

#include <ATen/ATen.h>

#include <set>

#include "catch.h"
#include "dla/util/error.h"

namespace dla::data {
namespace {

// Mean distance from each query to its key in the context, over a batch.
double mean_query_gap(const MqarBatch& batch, int64_t num_kv_pairs) {
  const auto ids = batch.ids_BL.accessor<int64_t, 2>();
  const auto labels = batch.labels_BL.accessor<int64_t, 2>();
  double sum = 0;
  int64_t count = 0;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    for (int64_t t = 0; t < ids.size(1); ++t) {
      if (labels[b][t] == -100) continue;
      for (int64_t j = 0; j < num_kv_pairs; ++j) {
        if (ids[b][2 * j] == ids[b][t]) {
          sum += static_cast<double>(t - 2 * j);
          ++count;
        }
      }
    }
  }
  return sum / static_cast<double>(count);
}

}  // namespace

TEST_CASE("generate_mqar is deterministic in its seed", "[data]") {
  const MqarOptions options;
  const auto a = generate_mqar(options, 8, 64, 256, 42);
  const auto b = generate_mqar(options, 8, 64, 256, 42);
  const auto c = generate_mqar(options, 8, 64, 256, 43);
  CHECK(at::equal(a.ids_BL, b.ids_BL));
  CHECK(at::equal(a.labels_BL, b.labels_BL));
  CHECK_FALSE(at::equal(a.ids_BL, c.ids_BL));
  CHECK(a.ids_BL.sizes() == at::IntArrayRef({8, 64}));
  CHECK(a.labels_BL.sizes() == at::IntArrayRef({8, 64}));
  CHECK(a.ids_BL.scalar_type() == at::kLong);
  CHECK(a.labels_BL.scalar_type() == at::kLong);
}

TEST_CASE("generate_mqar lays out key-value pairs and queries each key once", "[data]") {
  const int64_t V = 128, L = 96, B = 16;
  for (const bool random_non_queries : {false, true}) {
    CAPTURE(random_non_queries);
    MqarOptions options;
    options.num_kv_pairs = 6;
    options.random_non_queries = random_non_queries;
    const int64_t kv = options.num_kv_pairs;
    const auto batch = generate_mqar(options, B, L, V, 7);
    const auto ids = batch.ids_BL.accessor<int64_t, 2>();
    const auto labels = batch.labels_BL.accessor<int64_t, 2>();
    CHECK(batch.ids_BL.min().item<int64_t>() >= 0);
    CHECK(batch.ids_BL.max().item<int64_t>() < V);
    for (int64_t b = 0; b < B; ++b) {
      CAPTURE(b);
      std::set<int64_t> context_keys, queried_keys;
      for (int64_t j = 0; j < kv; ++j) {
        const int64_t key = ids[b][2 * j], value = ids[b][2 * j + 1];
        CHECK((key >= 1 && key < V / 2));
        CHECK((value >= V / 2 && value < V));
        context_keys.insert(key);
        CHECK(labels[b][2 * j] == -100);
        CHECK(labels[b][2 * j + 1] == -100);
      }
      CHECK(static_cast<int64_t>(context_keys.size()) == kv);  // distinct keys
      int64_t num_labelled = 0;
      for (int64_t t = 2 * kv; t < L; ++t) {
        CAPTURE(t);
        if (labels[b][t] == -100) {
          if (!random_non_queries) CHECK(ids[b][t] == 0);
          continue;
        }
        ++num_labelled;
        const int64_t key = ids[b][t];
        CHECK(queried_keys.insert(key).second);  // each key once
        // The key is in the context, with the label as the value right after it.
        bool found = false;
        for (int64_t j = 0; j < kv; ++j) {
          if (ids[b][2 * j] == key) {
            found = true;
            CHECK(ids[b][2 * j + 1] == labels[b][t]);
          }
        }
        CHECK(found);
      }
      CHECK(num_labelled == kv);
      CHECK(queried_keys == context_keys);
    }
  }
}

TEST_CASE("generate_mqar query gaps: power_a near 1 gives longer gaps than a small power_a", "[data]") {
  MqarOptions options;
  options.num_kv_pairs = 4;
  options.power_a = 1.0;
  const double uniform = mean_query_gap(generate_mqar(options, 256, 256, 512, 11), options.num_kv_pairs);
  options.power_a = 0.01;
  const double skewed = mean_query_gap(generate_mqar(options, 256, 256, 512, 11), options.num_kv_pairs);
  CAPTURE(uniform, skewed);
  // Uniform slots over 124 places put the mean gap near 130; p(i) ∝ i^-0.99 pulls it far below.
  CHECK(uniform > 100);
  CHECK(skewed < 0.6 * uniform);
}

TEST_CASE("generate_mqar rejects sizes that cannot hold the pairs and queries", "[data]") {
  MqarOptions options;
  options.num_kv_pairs = 8;
  CHECK_THROWS_AS(generate_mqar(options, 1, 31, 256, 0), UserError);  // needs seq_len >= 32
  CHECK_THROWS_WITH(generate_mqar(options, 1, 31, 256, 0), test::has_substr("data.mqar.num_kv_pairs"));
  CHECK_NOTHROW(generate_mqar(options, 1, 32, 256, 0));
  CHECK_THROWS_AS(generate_mqar(options, 1, 64, 16, 0), UserError);  // keys need vocab_size > 16
  CHECK_THROWS_WITH(generate_mqar(options, 1, 64, 16, 0), test::has_substr("model.vocab_size"));
}

}  // namespace dla::data
