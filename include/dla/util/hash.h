// FNV-1a, 64 bits: the checksum of token shards, checkpoint files and tokenizer fingerprints.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dla {

/// FNV-1a 64 of `size` bytes at `data`, continuing from `hash`.
inline uint64_t fnv1a64(const void* data, std::size_t size, uint64_t hash = 0xcbf29ce484222325ULL) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    hash ^= bytes[i];
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

}  // namespace dla
