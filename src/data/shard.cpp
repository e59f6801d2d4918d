// Writing and checking token shards.
#include "dla/data/shard.h"

#include <algorithm>
#include <array>
#include <cstring>

#include <fmt/format.h>

#include "dla/data/tokenizer.h"
#include "dla/io/atomic_file.h"
#include "dla/util/error.h"

namespace dla::data {
namespace {

constexpr std::array<char, 8> kMagic = {'D', 'L', 'A', 'T', 'O', 'K', 'S', '\0'};

template <class T>
void put(std::byte* at, T value) {
  std::memcpy(at, &value, sizeof(T));  // the formats are little-endian, as the machines we run on
}

template <class T>
T get(const std::byte* at) {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

}  // namespace

uint32_t token_bytes_for(uint64_t vocab_size) {
  return vocab_size <= 65536 ? 2 : 4;
}

ShardInfo write_shard(const std::filesystem::path& path, std::span<const uint32_t> tokens,
                      uint64_t vocab_size, uint64_t tokenizer_fingerprint) {
  ShardInfo info{token_bytes_for(vocab_size), tokens.size(), vocab_size, tokenizer_fingerprint, 0};
  std::vector<std::byte> body(tokens.size() * info.token_bytes);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (info.token_bytes == 2) {
      put(body.data() + 2 * i, static_cast<uint16_t>(tokens[i]));
    } else {
      put(body.data() + 4 * i, tokens[i]);
    }
  }
  info.checksum = fnv1a64(body.data(), body.size());
  std::array<std::byte, kShardHeaderBytes> header{};
  std::memcpy(header.data(), kMagic.data(), kMagic.size());
  put(header.data() + 8, kShardVersion);
  put(header.data() + 12, info.token_bytes);
  put(header.data() + 16, info.num_tokens);
  put(header.data() + 24, info.vocab_size);
  put(header.data() + 32, info.tokenizer_fingerprint);
  put(header.data() + 40, info.checksum);
  io::AtomicFileWriter writer(path);
  writer.write(header);
  writer.write(body);
  writer.commit();
  return info;
}

Shard::Shard(const std::filesystem::path& path) : file_(path) {
  const auto bytes = file_.bytes();
  const std::string name = path.string();
  if (bytes.size() < kShardHeaderBytes) {
    throw UserError(fmt::format("{}: truncated token shard: {} bytes, shorter than its {}-byte header", name,
                                bytes.size(), kShardHeaderBytes));
  }
  if (std::memcmp(bytes.data(), kMagic.data(), kMagic.size()) != 0)
    throw UserError(fmt::format("{}: not a dla token shard (wrong magic)", name));
  const auto version = get<uint32_t>(bytes.data() + 8);
  if (version != kShardVersion) {
    throw UserError(
        fmt::format("{}: token shard version {}, this dla reads version {}; re-run dla data prepare", name,
                    version, kShardVersion));
  }
  info_ = {get<uint32_t>(bytes.data() + 12), get<uint64_t>(bytes.data() + 16),
           get<uint64_t>(bytes.data() + 24), get<uint64_t>(bytes.data() + 32),
           get<uint64_t>(bytes.data() + 40)};
  if (info_.token_bytes != 2 && info_.token_bytes != 4)
    throw UserError(fmt::format("{}: token width {} bytes; expected 2 or 4", name, info_.token_bytes));
  const uint64_t expected = kShardHeaderBytes + info_.num_tokens * info_.token_bytes;
  if (bytes.size() != expected) {
    throw UserError(
        fmt::format("{}: truncated or damaged token shard: {} bytes, the header announces {} tokens "
                    "({} bytes)",
                    name, bytes.size(), info_.num_tokens, expected));
  }
  tokens_ = bytes.data() + kShardHeaderBytes;
  if (fnv1a64(tokens_, bytes.size() - kShardHeaderBytes) != info_.checksum)
    throw UserError(fmt::format("{}: checksum mismatch: the token shard is damaged", name));
  for (uint64_t i = 0; i < info_.num_tokens; ++i)
    max_token_ = std::max(max_token_, token(i));
  if (info_.num_tokens > 0 && max_token_ >= info_.vocab_size) {
    throw UserError(fmt::format("{}: token id {} is outside the shard's vocabulary of {}", name, max_token_,
                                info_.vocab_size));
  }
}

uint32_t Shard::token(uint64_t i) const {
  return info_.token_bytes == 2 ? get<uint16_t>(tokens_ + 2 * i) : get<uint32_t>(tokens_ + 4 * i);
}

void Shard::copy(uint64_t first, std::span<int64_t> out) const {
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = token(first + i);
}

}  // namespace dla::data
