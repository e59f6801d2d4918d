// Tokenizers: a built-in byte tokenizer (256 byte values plus end-of-document and padding, no file) and
// SentencePiece models (BPE or unigram, trained here or loaded, e.g. LLaMA-style). Each has a fingerprint, a
// hash that data shards record so that training refuses shards made with another tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dla/util/hash.h"

namespace dla::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  /// Special tokens decode to nothing.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  /// The token appended after every document.
  virtual int64_t eos_id() const = 0;
  /// 64-bit hash of what defines the tokenizer (the model file's bytes; "byte-v1" for the byte tokenizer).
  virtual uint64_t fingerprint() const = 0;
  /// "byte" or the model file's path.
  virtual std::string describe() const = 0;
};

/// Byte values 0..255, then <eos> = 256 and <pad> = 257: vocabulary 258.
class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int64_t kEos = 256;
  static constexpr int64_t kPad = 257;
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return 258; }
  int64_t eos_id() const override { return kEos; }
  uint64_t fingerprint() const override;
  std::string describe() const override { return "byte"; }
};

/// "byte" for the byte tokenizer, else the path of a SentencePiece model. A missing, unreadable or invalid
/// model, or one without an EOS token, throws dla::UserError naming the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

struct SentencePieceTraining {
  std::vector<std::string> inputs;  ///< text files, one sentence per line
  int64_t vocab_size = 8000;
  std::string type = "bpe";  ///< bpe or unigram
  std::string out;           ///< FILE.model; FILE.vocab is written beside it
  int64_t max_sentences = 2'000'000;
};

/// Trains a SentencePiece model with <unk> = 0, <bos> = 1, <eos> = 2, <pad> = 3 and byte fallback. Throws
/// dla::UserError with SentencePiece's message on failure.
void train_sentencepiece(const SentencePieceTraining& options);

}  // namespace dla::data
