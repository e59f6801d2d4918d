// `dla data prepare`: documents (text files, or JSON lines with a text field) -> tokens -> shards and a
// manifest, with a train/validation split by document. Streams: memory holds one line and one shard.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dla/data/manifest.h"

namespace dla::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  ///< files, directories (searched recursively) or glob patterns
  std::string format = "text";      ///< text: one document per file; jsonl: one per line
  std::string field = "text";       ///< jsonl: the field holding the document
  std::string tokenizer = "byte";   ///< "byte" or a SentencePiece model file
  std::string out;                  ///< the dataset directory
  double val_fraction = 0.01;       ///< documents i with floor((i+1)·f) > floor(i·f) go to validation
  uint64_t shard_tokens = 1ULL << 24;
  double progress_seconds = 2.0;  ///< between progress lines
};

/// Writes the dataset into OUT.tmp.<pid>, then replaces OUT with it, so OUT is either the old dataset or the
/// complete new one. Missing inputs, empty files, malformed JSON lines and a missing field throw
/// dla::UserError naming the file (and line). Returns the manifest written.
Manifest prepare_dataset(const PrepareOptions& options);

/// Replaces every invalid UTF-8 sequence of `text` by U+FFFD, adding the number replaced to `replaced`.
std::string sanitize_utf8(std::string_view text, uint64_t& replaced);

/// The input files of `inputs`, in order: a file as given, a directory's regular files recursively in sorted
/// order, a glob's matches sorted. Throws dla::UserError for a path or pattern that names nothing.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs);

}  // namespace dla::data
