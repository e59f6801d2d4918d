// `dla generate --checkpoint CKPT --ids "..." --max-new N [--temperature T --top-k K --seed S --device D]`:
// new tokens after a prompt, decoded through the recurrent caches, as one JSON object on stdout.
#include <iostream>

#include <ATen/Context.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "dla/checkpoint/model_checkpoint.h"
#include "dla/cli/command.h"
#include "dla/cli/token_ids.h"
#include "dla/infer/generate.h"
#include "dla/util/error.h"

namespace dla::cli {
namespace {

struct GenerateArgs {
  std::string checkpoint;
  std::string ids;
  int64_t max_new = 32;
  infer::SamplingOptions sampling;
  std::string device = "auto";
};

int generate(const GenerateArgs& args) {
  const TokenSequence prompt = parse_token_ids(args.ids, "--ids", 1);
  auto loaded = checkpoint::load_model_checkpoint(args.checkpoint);
  const auto& model_options = loaded.config.config.model;
  check_vocabulary(prompt, model_options.vocab_size);
  const bool cuda = at::hasCUDA();
  if (args.device == "cuda" && !cuda)
    throw UserError("--device cuda: this machine or build has no CUDA device");
  const at::Device device = (args.device == "cuda" || (args.device == "auto" && cuda)) ? at::kCUDA : at::kCPU;
  loaded.model->to(device);

  const infer::Generation generation =
      infer::generate(*loaded.model, prompt.ids, args.max_new, args.sampling);
  spdlog::info("generated {} tokens after a prompt of {}; recurrent caches hold {} bytes",
               generation.tokens.size(), prompt.ids.size(), generation.cache_bytes);
  const auto rate = [](std::size_t tokens, double seconds) {
    return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
  };
  const nlohmann::json result = {
      {"checkpoint", args.checkpoint},
      {"memory_policy", config::enum_name(model_options.memory.policy)},
      {"prompt_tokens", prompt.ids.size()},
      {"tokens", generation.tokens},
      {"cache_bytes", generation.cache_bytes},
      {"prefill_tokens_per_s", rate(prompt.ids.size(), generation.prefill_seconds)},
      {"decode_tokens_per_s", rate(generation.tokens.size(), generation.decode_seconds)},
      {"device", device.str()}};
  std::cout << result.dump() << std::endl;
  return kExitOk;
}

}  // namespace

void add_generate_command(CLI::App& root, CommandList& commands) {
  auto* app =
      root.add_subcommand("generate",
                          "Continue a prompt of token ids with a checkpoint's model: chunkwise prefill, then "
                          "recurrent decoding; one JSON object on stdout");
  auto args = std::make_shared<GenerateArgs>();
  app->add_option("--checkpoint", args->checkpoint,
                  "dla checkpoint directory (config.yaml, model.safetensors)")
      ->required();
  app->add_option("--ids", args->ids, "The prompt's token ids: \"5 17 2 ...\"")->required();
  app->add_option("--max-new", args->max_new, "Tokens to generate")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--temperature", args->sampling.temperature,
                  "0 is greedy (argmax); else sample softmax(logits/T)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--top-k", args->sampling.top_k, "Sample among the k most likely tokens only; 0 is all")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--seed", args->sampling.seed, "Seed of the sampler")->capture_default_str();
  app->add_option("--device", args->device, "auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  commands.push_back({app, [args] { return generate(*args); }});
}

}  // namespace dla::cli
