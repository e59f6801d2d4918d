// `dla checkpoint list|verify RUN_DIR` and `dla export --checkpoint CKPT --out DIR`.
#include <iostream>

#include <fmt/format.h>

#include "dla/checkpoint/fla_export.h"
#include "dla/checkpoint/model_checkpoint.h"
#include "dla/checkpoint/train_checkpoint.h"
#include "dla/cli/command.h"
#include "dla/util/error.h"

namespace dla::cli {
namespace {

struct CheckpointArgs {
  std::string path;
  std::string out;
  std::string dtype = "float32";
};

/// The checkpoints of a run directory, or the one checkpoint `path` names.
std::vector<checkpoint::CheckpointStatus> statuses_of(const std::filesystem::path& path) {
  if (!std::filesystem::is_directory(path))
    throw UserError(fmt::format("{}: no such directory", path.string()));
  if (std::filesystem::exists(path / checkpoint::kCheckpointManifest) ||
      path.filename().string().starts_with("step-"))
    return {checkpoint::verify_checkpoint(path)};
  return checkpoint::list_checkpoints(path);
}

int list(const CheckpointArgs& args, bool verify) {
  const auto statuses = statuses_of(args.path);
  if (statuses.empty()) {
    std::cout << "no checkpoints in " << args.path << std::endl;
    return verify ? kExitUserError : kExitOk;
  }
  bool all_ok = true;
  std::cout << fmt::format("{:<16} {:>10} {:>12}  {}\n", "checkpoint", "step", "MB", "integrity");
  for (const auto& status : statuses) {
    all_ok = all_ok && status.ok();
    std::cout << fmt::format("{:<16} {:>10} {:>12.1f}  {}\n", status.dir.filename().string(), status.step,
                             static_cast<double>(status.bytes) / 1e6,
                             status.ok() ? "ok" : "DAMAGED: " + status.problem);
  }
  std::cout.flush();
  return verify && !all_ok ? kExitUserError : kExitOk;
}

}  // namespace

void add_checkpoint_command(CLI::App& root, CommandList& commands) {
  auto* group =
      root.add_subcommand("checkpoint", "List and verify the training checkpoints of a run directory");
  auto args = std::make_shared<CheckpointArgs>();
  auto* list_app = group->add_subcommand("list", "Steps, sizes and integrity of a run's checkpoints");
  list_app->add_option("run_dir", args->path, "Run directory (or one checkpoint directory)")->required();
  commands.push_back({list_app, [args] { return list(*args, /*verify=*/false); }});
  auto* verify_app = group->add_subcommand(
      "verify", "Check every file of every checkpoint against its manifest; exit 1 if any is damaged");
  verify_app->add_option("run_dir", args->path, "Run directory (or one checkpoint directory)")->required();
  commands.push_back({verify_app, [args] { return list(*args, /*verify=*/true); }});

  auto* export_app = root.add_subcommand(
      "export",
      "Write a dla checkpoint as a flash-linear-attention checkpoint (config.json + model.safetensors)");
  export_app
      ->add_option("--checkpoint", args->path, "dla checkpoint directory (a model or training checkpoint)")
      ->required();
  export_app->add_option("--out", args->out, "Directory to write")->required();
  export_app->add_option("--dtype", args->dtype, "float32 or bfloat16")
      ->check(CLI::IsMember({"float32", "bfloat16"}))
      ->capture_default_str();
  commands.push_back({export_app, [args] {
                        auto loaded = checkpoint::load_model_checkpoint(args->path);
                        checkpoint::export_fla_checkpoint(*loaded.model, args->out, args->dtype);
                        std::cout << "wrote " << args->out << "/config.json and model.safetensors"
                                  << std::endl;
                        return kExitOk;
                      }});
}

}  // namespace dla::cli
