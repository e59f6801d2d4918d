// Token shards: the files `dla data prepare` writes and the loader maps. A 64-byte little-endian header, then
// the tokens as 16- or 32-bit unsigned integers:
//   magic "DLATOKS\0" | u32 version (1) | u32 token bytes (2 or 4) | u64 token count | u64 vocabulary size |
//   u64 tokenizer fingerprint | u64 checksum (FNV-1a 64 of the token bytes) | 16 zero bytes
// Written atomically; opening checks every field and the checksum, so a truncated or damaged shard is an
// error naming the file, never training data.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "dla/io/mapped_file.h"

namespace dla::data {

inline constexpr uint32_t kShardVersion = 1;
inline constexpr std::size_t kShardHeaderBytes = 64;

struct ShardInfo {
  uint32_t token_bytes = 2;
  uint64_t num_tokens = 0;
  uint64_t vocab_size = 0;
  uint64_t tokenizer_fingerprint = 0;
  uint64_t checksum = 0;
};

/// 2 when every id of a vocabulary of vocab_size fits 16 bits, else 4.
uint32_t token_bytes_for(uint64_t vocab_size);

/// Writes `tokens` (each < vocab_size) as a shard at `path`, atomically. Returns its header fields.
ShardInfo write_shard(const std::filesystem::path& path, std::span<const uint32_t> tokens,
                      uint64_t vocab_size, uint64_t tokenizer_fingerprint);

/// A shard mapped read-only after its checks.
class Shard {
 public:
  /// Throws dla::UserError naming the file for: missing, shorter than a header, wrong magic, an unknown
  /// version or token width, a size that does not match the token count, a checksum mismatch.
  explicit Shard(const std::filesystem::path& path);
  const ShardInfo& info() const { return info_; }
  uint64_t size() const { return info_.num_tokens; }
  /// The largest token id in the shard (0 when empty), found while checking it.
  uint32_t max_token() const { return max_token_; }
  uint32_t token(uint64_t i) const;
  /// Copies tokens [first, first + out.size()) into out.
  void copy(uint64_t first, std::span<int64_t> out) const;
  const std::filesystem::path& path() const { return file_.path(); }

 private:
  io::MappedFile file_;
  ShardInfo info_;
  const std::byte* tokens_ = nullptr;
  uint32_t max_token_ = 0;
};

}  // namespace dla::data
