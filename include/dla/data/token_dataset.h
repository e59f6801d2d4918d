// Reading a prepared token dataset: one split's shards, memory-mapped and checked, seen as one token sequence
// cut into windows of seq_len + 1 tokens; a deterministic sample order over epochs; and a loader that turns a
// range of global sample indices into a batch, with background prefetch.
// Shapes: B sequences, T = seq_len tokens.
#pragma once

#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dla/data/manifest.h"
#include "dla/data/shard.h"

namespace dla::data {

class TokenDataset {
 public:
  /// Opens split ("train" or "val") of the dataset in `dir` for windows of seq_len + 1 tokens. Checks every
  /// shard against the manifest (and its own checksum), that the tokenizer's vocabulary fits model_vocab,
  /// and, when given, that the tokenizer fingerprint matches. Every mismatch throws dla::UserError naming the
  /// file.
  TokenDataset(const std::filesystem::path& dir, const std::string& split, int64_t seq_len,
               int64_t model_vocab, std::optional<uint64_t> tokenizer_fingerprint = std::nullopt);

  int64_t num_windows() const { return num_windows_; }
  uint64_t num_tokens() const { return num_tokens_; }
  int64_t seq_len() const { return seq_len_; }
  const Manifest& manifest() const { return manifest_; }
  /// Window w: tokens [w·seq_len, w·seq_len + seq_len + 1) of the split, into out (seq_len + 1 entries).
  void window(int64_t w, std::span<int64_t> out) const;

 private:
  Manifest manifest_;
  std::vector<Shard> shards_;
  std::vector<uint64_t> shard_starts_;  ///< first token of each shard in the split
  uint64_t num_tokens_ = 0;
  int64_t seq_len_;
  int64_t num_windows_ = 0;
};

/// The order in which training visits windows: epoch e is a permutation of all windows drawn from
/// (seed, e); global sample g is window permutation_{g / N}[g % N]. The same on every machine.
class SampleOrder {
 public:
  SampleOrder(int64_t num_windows, uint64_t seed);
  int64_t window_of(int64_t global_sample);

 private:
  int64_t num_windows_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> permutation_;
};

struct TokenBatch {
  at::Tensor ids_BT;     ///< int64
  at::Tensor labels_BT;  ///< the next token of each position
};

/// Batches of consecutive global samples. A run's cursor is the number of global samples consumed, so any
/// world size can continue it: rank r of W takes its slice of each global batch (see docs/data.md).
class BatchLoader {
 public:
  BatchLoader(std::shared_ptr<const TokenDataset> dataset, uint64_t seed, bool shuffle = true);
  /// Samples [first, first + count) of the order.
  TokenBatch batch(int64_t first, int64_t count);
  /// Starts building batch(first, count) on a background thread; a following batch() with the same range
  /// takes it.
  void prefetch(int64_t first, int64_t count);
  const TokenDataset& dataset() const { return *dataset_; }

 private:
  TokenBatch build(int64_t first, int64_t count);

  std::shared_ptr<const TokenDataset> dataset_;
  SampleOrder order_;
  bool shuffle_;
  std::future<TokenBatch> pending_;
  int64_t pending_first_ = -1, pending_count_ = -1;
};

}  // namespace dla::data
