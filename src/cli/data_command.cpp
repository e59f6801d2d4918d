// `dla data prepare`: documents to token shards (docs/data.md).
#include <iostream>

#include <nlohmann/json.hpp>

#include "dla/cli/command.h"
#include "dla/data/prepare.h"

namespace dla::cli {

void add_data_command(CLI::App& root, CommandList& commands) {
  auto* group = root.add_subcommand("data", "Prepare token datasets");
  auto* prepare = group->add_subcommand(
      "prepare", "Tokenize documents into shards with a manifest and a validation split");
  auto options = std::make_shared<data::PrepareOptions>();
  prepare
      ->add_option("--input", options->inputs, "Files, directories (recursive) or glob patterns (repeatable)")
      ->required();
  prepare
      ->add_option("--format", options->format, "text (a document per file) or jsonl (a document per line)")
      ->check(CLI::IsMember({"text", "jsonl"}))
      ->capture_default_str();
  prepare->add_option("--field", options->field, "jsonl: the field that holds the text")
      ->capture_default_str();
  prepare->add_option("--tokenizer", options->tokenizer, "byte or a SentencePiece model file")
      ->capture_default_str();
  prepare->add_option("--out", options->out, "Dataset directory to write (replaced atomically)")->required();
  prepare->add_option("--val-fraction", options->val_fraction, "Fraction of documents for validation")
      ->check(CLI::Range(0.0, 0.999))
      ->capture_default_str();
  prepare->add_option("--shard-tokens", options->shard_tokens, "Tokens per shard")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  commands.push_back({prepare, [options] {
                        const data::Manifest manifest = data::prepare_dataset(*options);
                        std::cout << nlohmann::json{{"out", options->out},
                                                    {"documents_train", manifest.documents_train},
                                                    {"documents_val", manifest.documents_val},
                                                    {"tokens_train", manifest.tokens_train},
                                                    {"tokens_val", manifest.tokens_val},
                                                    {"shards", manifest.shards.size()},
                                                    {"invalid_utf8_replaced", manifest.invalid_utf8_replaced}}
                                         .dump()
                                  << std::endl;
                        return kExitOk;
                      }});
}

}  // namespace dla::cli
