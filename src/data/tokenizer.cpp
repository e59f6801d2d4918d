// The byte tokenizer and the SentencePiece adapter.
#include "dla/data/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "dla/util/error.h"

namespace dla::data {

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids(text.size());
  for (std::size_t i = 0; i < text.size(); ++i)
    ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (const int64_t id : ids) {
    if (id >= 0 && id < 256) text.push_back(static_cast<char>(id));
  }
  return text;
}

uint64_t ByteTokenizer::fingerprint() const {
  constexpr std::string_view kName = "byte-v1";
  return fnv1a64(kName.data(), kName.size());
}

namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw UserError(fmt::format("{}: the tokenizer model cannot be read", path));
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto status = processor_.LoadFromSerializedProto(bytes);
    if (!status.ok()) {
      throw UserError(fmt::format("{}: not a SentencePiece model ({})", path, status.ToString()));
    }
    if (processor_.eos_id() < 0)
      throw UserError(
          fmt::format("{}: the SentencePiece model has no EOS token, which ends documents", path));
    fingerprint_ = fnv1a64(bytes.data(), bytes.size());
  }
  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = processor_.Encode(text, &ids);
    if (!status.ok()) throw UserError(fmt::format("{}: encoding failed: {}", path_, status.ToString()));
    return {ids.begin(), ids.end()};
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    const std::vector<int> narrow(ids.begin(), ids.end());
    std::string text;
    const auto status = processor_.Decode(narrow, &text);
    if (!status.ok()) throw UserError(fmt::format("{}: decoding failed: {}", path_, status.ToString()));
    return text;
  }
  int64_t vocab_size() const override { return processor_.GetPieceSize(); }
  int64_t eos_id() const override { return processor_.eos_id(); }
  uint64_t fingerprint() const override { return fingerprint_; }
  std::string describe() const override { return path_; }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor processor_;
  uint64_t fingerprint_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "byte") return std::make_unique<ByteTokenizer>();
  return std::make_unique<SentencePieceTokenizer>(spec);
}

void train_sentencepiece(const SentencePieceTraining& options) {
  if (options.type != "bpe" && options.type != "unigram")
    throw UserError(fmt::format("--type must be bpe or unigram, got '{}'", options.type));
  if (options.inputs.empty()) throw UserError("tokenizer train: no --input files");
  std::string inputs;
  for (const auto& input : options.inputs) {
    if (!std::filesystem::is_regular_file(input)) throw UserError(fmt::format("{}: no such file", input));
    if (std::filesystem::file_size(input) == 0) throw UserError(fmt::format("{}: the file is empty", input));
    inputs += (inputs.empty() ? "" : ",") + input;
  }
  std::string prefix = options.out;
  if (prefix.ends_with(".model")) prefix.resize(prefix.size() - 6);
  const std::string args = fmt::format(
      "--input={} --model_prefix={} --vocab_size={} --model_type={} --unk_id=0 --bos_id=1 --eos_id=2 "
      "--pad_id=3 --byte_fallback=true --character_coverage=1.0 --input_sentence_size={} "
      "--shuffle_input_sentence=true --minloglevel=1",
      inputs, prefix, options.vocab_size, options.type, options.max_sentences);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) throw UserError(fmt::format("SentencePiece training failed: {}", status.ToString()));
}

}  // namespace dla::data
