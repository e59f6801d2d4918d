// `dla tokenizer train|encode|decode`: SentencePiece training and inspection of any tokenizer.
#include <iostream>
#include <iterator>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dla/cli/command.h"
#include "dla/cli/token_ids.h"
#include "dla/data/manifest.h"
#include "dla/data/tokenizer.h"

namespace dla::cli {
namespace {

struct TokenizerArgs {
  data::SentencePieceTraining training;
  std::string tokenizer = "byte";
  std::optional<std::string> text;
  std::string ids;
};

std::string read_stdin() {
  return {std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
}

}  // namespace

void add_tokenizer_command(CLI::App& root, CommandList& commands) {
  auto* group =
      root.add_subcommand("tokenizer", "Train a SentencePiece tokenizer, or encode and decode with one");
  auto args = std::make_shared<TokenizerArgs>();

  auto* train = group->add_subcommand("train", "Train a SentencePiece model (BPE or unigram) on text files");
  train->add_option("--input", args->training.inputs, "Text files (repeatable)")->required();
  train->add_option("--vocab-size", args->training.vocab_size, "Vocabulary size")
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 22))
      ->capture_default_str();
  train->add_option("--type", args->training.type, "bpe or unigram")
      ->check(CLI::IsMember({"bpe", "unigram"}))
      ->capture_default_str();
  train->add_option("--out", args->training.out, "FILE.model to write (FILE.vocab beside it)")->required();
  commands.push_back(
      {train, [args] {
         data::train_sentencepiece(args->training);
         const auto tokenizer = data::load_tokenizer(args->training.out);
         std::cout << nlohmann::json{{"model", args->training.out},
                                     {"vocab_size", tokenizer->vocab_size()},
                                     {"fingerprint", data::fingerprint_hex(tokenizer->fingerprint())}}
                          .dump()
                   << std::endl;
         return kExitOk;
       }});

  auto* encode =
      group->add_subcommand("encode", "Print the token ids of a text (--text, else standard input)");
  encode->add_option("--tokenizer", args->tokenizer, "byte or a SentencePiece model")->capture_default_str();
  encode->add_option("--text", args->text, "The text; standard input when absent");
  commands.push_back({encode, [args] {
                        const auto tokenizer = data::load_tokenizer(args->tokenizer);
                        const std::vector<int64_t> ids =
                            tokenizer->encode(args->text ? *args->text : read_stdin());
                        std::string line;
                        for (const int64_t id : ids)
                          line += (line.empty() ? "" : " ") + std::to_string(id);
                        std::cout << line << std::endl;
                        return kExitOk;
                      }});

  auto* decode = group->add_subcommand("decode", "Print the text of token ids");
  decode->add_option("--tokenizer", args->tokenizer, "byte or a SentencePiece model")->capture_default_str();
  decode->add_option("--ids", args->ids, "Token ids: \"5 17 2 ...\"")->required();
  commands.push_back({decode, [args] {
                        const auto tokenizer = data::load_tokenizer(args->tokenizer);
                        TokenSequence ids = parse_token_ids(args->ids, "--ids", 0);
                        check_vocabulary(ids, tokenizer->vocab_size());
                        std::cout << tokenizer->decode(ids.ids) << std::endl;
                        return kExitOk;
                      }});
}

}  // namespace dla::cli
