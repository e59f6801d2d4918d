// Mapped token datasets, the sample order and the batch loader.
#include "dla/data/token_dataset.h"

#include <algorithm>
#include <random>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::data {

TokenDataset::TokenDataset(const std::filesystem::path& dir, const std::string& split, int64_t seq_len,
                           int64_t model_vocab, std::optional<uint64_t> tokenizer_fingerprint)
    : manifest_(Manifest::read(dir)), seq_len_(seq_len) {
  const std::string manifest_path = (dir / kManifestFile).string();
  if (manifest_.vocab_size > model_vocab) {
    throw UserError(
        fmt::format("{}: the tokens come from a vocabulary of {} ({}), but model.vocab_size is {}; "
                    "token ids >= {} would index past the embedding",
                    manifest_path, manifest_.vocab_size, manifest_.tokenizer, model_vocab, model_vocab));
  }
  if (tokenizer_fingerprint && *tokenizer_fingerprint != manifest_.tokenizer_fingerprint) {
    throw UserError(
        fmt::format("{}: the shards were made with tokenizer {} (fingerprint {}), not with the "
                    "configured one (fingerprint {}); re-run dla data prepare with it",
                    manifest_path, manifest_.tokenizer, fingerprint_hex(manifest_.tokenizer_fingerprint),
                    fingerprint_hex(*tokenizer_fingerprint)));
  }
  for (const auto& entry : manifest_.shards) {
    if (entry.split != split) continue;
    Shard shard(dir / entry.file);
    const ShardInfo& info = shard.info();
    if (info.num_tokens != entry.tokens || info.checksum != entry.checksum ||
        info.tokenizer_fingerprint != manifest_.tokenizer_fingerprint) {
      throw UserError(fmt::format("{}: the shard does not match {} (tokens, checksum or tokenizer differ)",
                                  shard.path().string(), manifest_path));
    }
    if (info.num_tokens > 0 && shard.max_token() >= model_vocab) {
      throw UserError(fmt::format("{}: token id {} is outside the model's vocabulary [0, {})",
                                  shard.path().string(), shard.max_token(), model_vocab));
    }
    shard_starts_.push_back(num_tokens_);
    num_tokens_ += info.num_tokens;
    shards_.push_back(std::move(shard));
  }
  num_windows_ =
      num_tokens_ > 0 ? static_cast<int64_t>((num_tokens_ - 1) / static_cast<uint64_t>(seq_len)) : 0;
  if (num_windows_ == 0) {
    throw UserError(fmt::format("{}: the {} split holds {} tokens, fewer than one sequence of {} + 1",
                                manifest_path, split, num_tokens_, seq_len));
  }
}

void TokenDataset::window(int64_t w, std::span<int64_t> out) const {
  uint64_t position = static_cast<uint64_t>(w) * static_cast<uint64_t>(seq_len_);
  std::size_t filled = 0;
  while (filled < out.size()) {
    const auto shard_index = static_cast<std::size_t>(
        std::upper_bound(shard_starts_.begin(), shard_starts_.end(), position) - shard_starts_.begin() - 1);
    const Shard& shard = shards_[shard_index];
    const uint64_t offset = position - shard_starts_[shard_index];
    const auto count =
        static_cast<std::size_t>(std::min<uint64_t>(out.size() - filled, shard.size() - offset));
    shard.copy(offset, out.subspan(filled, count));
    filled += count;
    position += count;
  }
}

SampleOrder::SampleOrder(int64_t num_windows, uint64_t seed) : num_windows_(num_windows), seed_(seed) {}

int64_t SampleOrder::window_of(int64_t global_sample) {
  const int64_t epoch = global_sample / num_windows_;
  if (epoch != epoch_) {
    // Fisher–Yates with mt19937_64 and plain modulo, so the order does not depend on the standard library.
    std::mt19937_64 rng(seed_ ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(epoch + 1)));
    permutation_.resize(static_cast<std::size_t>(num_windows_));
    for (int64_t i = 0; i < num_windows_; ++i)
      permutation_[static_cast<std::size_t>(i)] = i;
    for (int64_t i = num_windows_ - 1; i > 0; --i) {
      const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
      std::swap(permutation_[static_cast<std::size_t>(i)], permutation_[static_cast<std::size_t>(j)]);
    }
    epoch_ = epoch;
  }
  return permutation_[static_cast<std::size_t>(global_sample % num_windows_)];
}

BatchLoader::BatchLoader(std::shared_ptr<const TokenDataset> dataset, uint64_t seed, bool shuffle)
    : dataset_(std::move(dataset)), order_(dataset_->num_windows(), seed), shuffle_(shuffle) {}

TokenBatch BatchLoader::build(int64_t first, int64_t count) {
  const int64_t length = dataset_->seq_len() + 1;
  at::Tensor windows = at::empty({count, length}, at::kLong);
  auto* data = windows.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t sample = first + i;
    const int64_t w = shuffle_ ? order_.window_of(sample) : sample % dataset_->num_windows();
    dataset_->window(w, std::span<int64_t>(data + i * length, static_cast<std::size_t>(length)));
  }
  return {windows.narrow(1, 0, length - 1), windows.narrow(1, 1, length - 1)};
}

TokenBatch BatchLoader::batch(int64_t first, int64_t count) {
  if (pending_.valid()) {
    TokenBatch ready = pending_.get();
    if (pending_first_ == first && pending_count_ == count) return ready;
  }
  return build(first, count);
}

void BatchLoader::prefetch(int64_t first, int64_t count) {
  if (pending_.valid()) pending_.wait();
  pending_first_ = first;
  pending_count_ = count;
  pending_ = std::async(std::launch::async, [this, first, count] { return build(first, count); });
}

}  // namespace dla::data
