// MQAR generation, following Zoology's multiquery_ar (anchors.md D.1).
#include "dla/data/mqar.h"

#include <ATen/ATen.h>

#include <numeric>
#include <random>

#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::data {
namespace {

// Draws `count` distinct integers from [lo, hi).
std::vector<int64_t> distinct(std::mt19937_64& rng, int64_t lo, int64_t hi, int64_t count) {
  std::vector<int64_t> pool(static_cast<std::size_t>(hi - lo));
  std::iota(pool.begin(), pool.end(), lo);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < count; ++i) {
    std::uniform_int_distribution<std::size_t> pick(static_cast<std::size_t>(i), pool.size() - 1);
    std::swap(pool[static_cast<std::size_t>(i)], pool[pick(rng)]);
    out.push_back(pool[static_cast<std::size_t>(i)]);
  }
  return out;
}

}  // namespace

MqarBatch generate_mqar(const MqarOptions& options, int64_t batch, int64_t seq_len, int64_t vocab_size,
                        uint64_t seed) {
  const int64_t kv = options.num_kv_pairs;
  if (4 * kv > seq_len) {
    throw UserError(fmt::format("data.mqar.num_kv_pairs = {} needs train.seq_len >= 4 · {} = {}, got {}", kv,
                                kv, 4 * kv, seq_len));
  }
  if (kv >= vocab_size / 2) {
    throw UserError(fmt::format("data.mqar.num_kv_pairs = {} needs model.vocab_size > 2 · {}, got {}", kv, kv,
                                vocab_size));
  }
  const int64_t context = 2 * kv;
  const int64_t num_slots = (seq_len - context) / 2;
  // p(i) ∝ a·i^(a−1) for gap i = 1..num_slots.
  std::vector<double> slot_weights(static_cast<std::size_t>(num_slots));
  for (int64_t i = 0; i < num_slots; ++i) {
    slot_weights[static_cast<std::size_t>(i)] =
        options.power_a * std::pow(static_cast<double>(i + 1), options.power_a - 1.0);
  }

  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> any_token(0, vocab_size - 1);
  at::Tensor ids = at::zeros({batch, seq_len}, at::kLong);
  at::Tensor labels = at::full({batch, seq_len}, -100, at::kLong);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto labels_a = labels.accessor<int64_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    const auto keys = distinct(rng, 1, vocab_size / 2, kv);
    const auto values = distinct(rng, vocab_size / 2, vocab_size, kv);
    std::vector<bool> used(static_cast<std::size_t>(seq_len), false);
    for (int64_t j = 0; j < kv; ++j) {
      ids_a[b][2 * j] = keys[static_cast<std::size_t>(j)];
      ids_a[b][2 * j + 1] = values[static_cast<std::size_t>(j)];
      used[static_cast<std::size_t>(2 * j)] = used[static_cast<std::size_t>(2 * j + 1)] = true;
    }
    // Query slots without replacement, weighted by the gap distribution; keys keep their context order.
    std::vector<double> weights = slot_weights;
    std::vector<int64_t> slots;
    for (int64_t j = 0; j < kv; ++j) {
      std::discrete_distribution<int64_t> pick(weights.begin(), weights.end());
      const int64_t slot = pick(rng);
      weights[static_cast<std::size_t>(slot)] = 0.0;
      slots.push_back(slot);
    }
    for (int64_t j = 0; j < kv; ++j) {
      const int64_t pos = context + 2 * slots[static_cast<std::size_t>(j)];
      ids_a[b][pos] = keys[static_cast<std::size_t>(j)];
      labels_a[b][pos] = values[static_cast<std::size_t>(j)];
      used[static_cast<std::size_t>(pos)] = true;
    }
    if (options.random_non_queries) {
      for (int64_t t = 0; t < seq_len; ++t) {
        if (!used[static_cast<std::size_t>(t)]) ids_a[b][t] = any_token(rng);
      }
    }
  }
  return {ids, labels};
}

}  // namespace dla::data
