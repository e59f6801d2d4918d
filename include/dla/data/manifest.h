// manifest.json of a prepared token dataset: the tokenizer it was made with, its shards (file, split, tokens,
// checksum) and counts. `dla data prepare` writes it last; the loader reads it first.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace dla::data {

inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr int kManifestVersion = 1;

struct ShardEntry {
  std::string file;   ///< relative to the dataset directory
  std::string split;  ///< train or val
  uint64_t tokens = 0;
  uint64_t checksum = 0;
};

struct Manifest {
  std::string tokenizer;  ///< "byte" or the model path given to prepare
  uint64_t tokenizer_fingerprint = 0;
  int64_t vocab_size = 0;
  int64_t eos_id = 0;
  uint64_t documents_train = 0, documents_val = 0;
  uint64_t tokens_train = 0, tokens_val = 0;
  uint64_t invalid_utf8_replaced = 0;  ///< invalid UTF-8 sequences replaced by U+FFFD
  std::vector<ShardEntry> shards;

  /// Reads DIR/manifest.json; a missing, malformed or other-version file throws dla::UserError naming it.
  static Manifest read(const std::filesystem::path& dir);
  /// Writes DIR/manifest.json atomically.
  void write(const std::filesystem::path& dir) const;
};

/// A fingerprint as 16 hex digits, as manifests and messages show it.
std::string fingerprint_hex(uint64_t fingerprint);

}  // namespace dla::data
