// `dla import-fla --in DIR --out CKPT`: a flash-linear-attention checkpoint as a dla checkpoint.
#include <iostream>

#include <fmt/format.h>

#include "dla/checkpoint/fla_import.h"
#include "dla/checkpoint/model_checkpoint.h"
#include "dla/cli/command.h"

namespace dla::cli {
namespace {

struct ImportFlaArgs {
  std::string in;
  std::string out;
};

int import_fla(const ImportFlaArgs& args) {
  auto loaded = checkpoint::import_fla_checkpoint(args.in);
  checkpoint::save_model_checkpoint(args.out, loaded.config, *loaded.model);
  const auto& model = loaded.config.config.model;
  std::cout << fmt::format("imported {} ({} layers, hidden {}, vocab {}): {} parameters -> {}\n",
                           checkpoint::fla_model_type(model.mixer), model.num_layers, model.hidden_size,
                           model.vocab_size, loaded.model->num_parameters(), args.out);
  return kExitOk;
}

}  // namespace

void add_import_fla_command(CLI::App& root, CommandList& commands) {
  auto* app = root.add_subcommand(
      "import-fla",
      "Convert a flash-linear-attention checkpoint (GatedDeltaNetForCausalLM or Mamba2ForCausalLM: "
      "config.json and model.safetensors) into a dla checkpoint");
  auto args = std::make_shared<ImportFlaArgs>();
  app->add_option("--in", args->in, "fla checkpoint directory (config.json, model.safetensors)")->required();
  app->add_option("--out", args->out,
                  "dla checkpoint directory to write (an existing checkpoint is replaced)")
      ->required();
  commands.push_back({app, [args] { return import_fla(*args); }});
}

}  // namespace dla::cli
