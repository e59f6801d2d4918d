// `dla score --checkpoint CKPT (--ids "..." | --ids-file FILE)`: the mean next-token loss (natural log)
// of token sequences under a checkpoint's model, as one JSON object on stdout.
// Shapes: T tokens.
#include <charconv>
#include <cmath>
#include <fstream>
#include <iostream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dla/checkpoint/model_checkpoint.h"
#include "dla/cli/command.h"
#include "dla/util/error.h"

namespace dla::cli {
namespace {

struct ScoreArgs {
  std::string checkpoint;
  std::optional<std::string> ids;
  std::optional<std::string> ids_file;
};

/// One sequence to score and where it came from, for messages ("--ids" or "FILE:LINE").
struct Sequence {
  std::string origin;
  std::vector<int64_t> ids;
};

// Token ids separated by white space or commas; every token a non-negative integer.
Sequence parse_ids(const std::string& text, std::string origin) {
  Sequence sequence{std::move(origin), {}};
  std::size_t pos = 0;
  while (true) {
    pos = text.find_first_not_of(" \t\r\n,", pos);
    if (pos == std::string::npos) break;
    const std::size_t end = std::min(text.find_first_of(" \t\r\n,", pos), text.size());
    const std::string_view token(text.data() + pos, end - pos);
    const std::size_t position = sequence.ids.size();
    int64_t id = 0;
    const auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), id);
    if (ec != std::errc() || ptr != token.data() + token.size()) {
      throw UserError(fmt::format("{}: token '{}' at position {} is not an integer token id", sequence.origin,
                                  token, position));
    }
    if (id < 0) {
      throw UserError(fmt::format("{}: token {} at position {} is negative; token ids are >= 0",
                                  sequence.origin, id, position));
    }
    sequence.ids.push_back(id);
    pos = end;
  }
  if (sequence.ids.size() < 2) {
    throw UserError(
        fmt::format("{}: {} token{}; scoring needs at least 2 (each token is predicted from the "
                    "ones before it)",
                    sequence.origin, sequence.ids.size(), sequence.ids.size() == 1 ? "" : "s"));
  }
  return sequence;
}

// One sequence per non-empty line.
std::vector<Sequence> read_ids_file(const std::string& file) {
  std::ifstream in(file);
  if (!in) throw UserError(fmt::format("{}: cannot be read", file));
  std::vector<Sequence> sequences;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r,") == std::string::npos) continue;
    sequences.push_back(parse_ids(line, fmt::format("{}:{}", file, number)));
  }
  if (sequences.empty())
    throw UserError(fmt::format("{}: no token ids (expected one sequence per line)", file));
  return sequences;
}

void check_vocabulary(const Sequence& sequence, int64_t vocab_size) {
  for (std::size_t i = 0; i < sequence.ids.size(); ++i) {
    if (sequence.ids[i] >= vocab_size) {
      throw UserError(fmt::format("{}: token {} at position {} is outside the model's vocabulary [0, {})",
                                  sequence.origin, sequence.ids[i], i, vocab_size));
    }
  }
}

int score(const ScoreArgs& args) {
  const std::vector<Sequence> sequences =
      args.ids ? std::vector<Sequence>{parse_ids(*args.ids, "--ids")} : read_ids_file(*args.ids_file);
  auto loaded = checkpoint::load_model_checkpoint(args.checkpoint);
  for (const auto& sequence : sequences)
    check_vocabulary(sequence, loaded.config.config.model.vocab_size);

  at::NoGradGuard no_grad;
  loaded.model->eval();
  double loss_sum = 0;
  int64_t num_tokens = 0, num_predicted = 0;
  nlohmann::json sequence_losses = nlohmann::json::array();
  for (const auto& sequence : sequences) {
    const at::Tensor ids_1T = at::tensor(sequence.ids, at::kLong).unsqueeze(0);
    const double loss = model::next_token_loss(loaded.model->forward(ids_1T), ids_1T).item<double>();
    const auto predicted = static_cast<int64_t>(sequence.ids.size()) - 1;
    loss_sum += loss * static_cast<double>(predicted);
    num_tokens += static_cast<int64_t>(sequence.ids.size());
    num_predicted += predicted;
    sequence_losses.push_back(loss);
  }
  const double mean_loss = loss_sum / static_cast<double>(num_predicted);
  const nlohmann::json result = {{"checkpoint", args.checkpoint},
                                 {"sequences", sequences.size()},
                                 {"tokens", num_tokens},
                                 {"predicted_tokens", num_predicted},
                                 {"mean_loss", mean_loss},
                                 {"perplexity", std::exp(mean_loss)},
                                 {"sequence_losses", sequence_losses}};
  std::cout << result.dump() << std::endl;
  return kExitOk;
}

}  // namespace

void add_score_command(CLI::App& root, CommandList& commands) {
  auto* app = root.add_subcommand(
      "score",
      "Mean next-token loss (natural log) and perplexity of token sequences under a checkpoint's model, "
      "as one JSON object on stdout");
  auto args = std::make_shared<ScoreArgs>();
  app->add_option("--checkpoint", args->checkpoint,
                  "dla checkpoint directory (config.yaml, model.safetensors)")
      ->required();
  auto* input = app->add_option_group("input", "The token ids to score (give exactly one)");
  input->add_option("--ids", args->ids, "One sequence of token ids: \"5 17 2 ...\" (positions count from 0)");
  input
      ->add_option("--ids-file", args->ids_file,
                   "A file with one sequence of token ids per line; the mean loss is over all predicted "
                   "tokens of all lines")
      ->check(CLI::ExistingFile);
  input->require_option(1);
  commands.push_back({app, [args] { return score(*args); }});
}

}  // namespace dla::cli
