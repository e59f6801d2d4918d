// `dla score --checkpoint CKPT (--ids "..." | --ids-file FILE)`: the mean next-token loss (natural log)
// of token sequences under a checkpoint's model, as one JSON object on stdout.
// Shapes: T tokens.
#include <cmath>
#include <iostream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dla/checkpoint/model_checkpoint.h"
#include "dla/cli/command.h"
#include "dla/cli/token_ids.h"
#include "dla/util/error.h"

namespace dla::cli {
namespace {

struct ScoreArgs {
  std::string checkpoint;
  std::optional<std::string> ids;
  std::optional<std::string> ids_file;
};

int score(const ScoreArgs& args) {
  // Each token is predicted from the ones before it, so a sequence needs two.
  const std::vector<TokenSequence> sequences =
      args.ids ? std::vector<TokenSequence>{parse_token_ids(*args.ids, "--ids", 2)}
               : read_token_ids_file(*args.ids_file, 2);
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
