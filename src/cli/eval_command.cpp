// `dla eval`: an evaluation suite on one or more checkpoints, side by side.
#include <torch/cuda.h>

#include "dla/checkpoint/model_checkpoint.h"
#include "dla/cli/command.h"
#include "dla/dist/device.h"
#include "dla/dist/environment.h"
#include "dla/eval/runner.h"
#include "dla/util/error.h"
#include "dla/util/log.h"

namespace dla::cli {
namespace {

struct EvalArgs {
  std::string suite;
  std::string checkpoints;
  std::string out;
  std::string data_root;
  std::string tokenizer;
  std::string device = "auto";
  int64_t limit = 0;
  int64_t batch_size = 0;
};

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  std::string_view rest = text;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    if (comma != 0) parts.emplace_back(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  return parts;
}

int evaluate(const EvalArgs& args) {
  const dist::DistEnvironment env = dist::read_environment();
  log::set_rank(env.rank, env.world_size);
  const eval::SuiteSpec suite = eval::load_suite(args.suite);
  const auto checkpoints = split_commas(args.checkpoints);
  if (checkpoints.empty()) throw UserError("--checkpoint names no checkpoint");
  const bool cuda = args.device == "cuda" || (args.device == "auto" && torch::cuda::is_available());
  if (args.device == "cuda" && !torch::cuda::is_available()) throw UserError("--device cuda: no CUDA device");
  const at::Device device = dist::rank_device(cuda, env);
  eval::EvalOptions options;
  options.data_root = args.data_root;
  options.limit = args.limit;
  options.batch_size = args.batch_size;
  std::unique_ptr<dist::Communicator> communicator;
  if (env.distributed())
    communicator = std::make_unique<dist::Communicator>(env, dist::DistOptions{}, device);
  const eval::Shard shard{env.rank, env.world_size, communicator.get()};

  std::vector<eval::CheckpointResults> results;
  for (const auto& path : checkpoints) {
    auto loaded = checkpoint::load_model_checkpoint(path);
    loaded.model->to(device);
    const std::string spec = !args.tokenizer.empty() ? args.tokenizer
                             : !loaded.config.config.data.tokenizer.empty()
                                 ? loaded.config.config.data.tokenizer
                                 : "byte";
    const auto tokenizer = data::load_tokenizer(spec);
    const int64_t vocab = loaded.config.config.model.vocab_size;
    if (eval::needs_tokenizer(suite) && tokenizer->vocab_size() > vocab) {
      throw UserError(
          fmt::format("{}: the tokenizer '{}' has {} tokens but the model only {}; pass the tokenizer the "
                      "model was trained with (--tokenizer)",
                      path, spec, tokenizer->vocab_size(), vocab));
    }
    spdlog::info("eval: suite '{}' ({} tasks) on {} with tokenizer {}", suite.name, suite.tasks.size(), path,
                 tokenizer->describe());
    results.push_back(
        {path, eval::run_suite(suite, *loaded.model, *tokenizer, vocab, device, options, shard)});
  }
  if (env.rank == 0) {
    const std::filesystem::path out =
        args.out.empty() ? std::filesystem::path("runs/eval") / suite.name : std::filesystem::path(args.out);
    eval::write_report(out, suite, options, results);
    spdlog::info("eval: wrote {}/results.{{json,md,csv}} and plots", out.string());
  }
  if (communicator) communicator->barrier();
  return kExitOk;
}

}  // namespace

void add_eval_command(CLI::App& root, CommandList& commands) {
  auto* app = root.add_subcommand("eval",
                                  "Run an evaluation suite (YAML) on checkpoints: dla eval --config "
                                  "configs/eval/commonsense.yaml --checkpoint runs/x/model");
  auto args = std::make_shared<EvalArgs>();
  app->add_option("-c,--config", args->suite, "Evaluation suite (YAML), e.g. configs/eval/synthetic.yaml")
      ->required()
      ->check(CLI::ExistingFile);
  app->add_option("--checkpoint", args->checkpoints, "Checkpoint directory, or several separated by commas")
      ->required();
  app->add_option("--out", args->out, "Output folder (default: runs/eval/<suite>)");
  app->add_option("--data-root", args->data_root,
                  "Folder of the tasks' data files (overrides the suite's data_root)");
  app->add_option("--tokenizer", args->tokenizer,
                  "byte or a SentencePiece model (default: the checkpoint's data.tokenizer, else byte)");
  app->add_option("--limit", args->limit, "At most N documents, examples or samples per task (quick checks)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--batch-size", args->batch_size, "Sequences per forward pass (default: the suite's)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--device", args->device, "auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  commands.push_back({app, [args] { return evaluate(*args); }});
}

}  // namespace dla::cli
