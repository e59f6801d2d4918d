// `dla train`: one training run from a config.
#include "dla/cli/command.h"
#include "dla/config/run_config.h"
#include "dla/dist/environment.h"
#include "dla/run/run_directory.h"
#include "dla/train/trainer.h"
#include "dla/util/log.h"

namespace dla::cli {
namespace {

struct TrainArgs {
  ConfigArgs config;
  std::optional<std::string> run_dir;
  std::optional<std::string> resume;
  std::optional<int64_t> stop_at;
};

int train(const TrainArgs& args) {
  // Started by `dla launch`, torchrun or srun: this process is one rank of a data-parallel job, and every
  // line it logs (config errors included) names the rank.
  const dist::DistEnvironment env = dist::read_environment();
  log::set_rank(env.rank, env.world_size);
  auto resolved = config::resolve_run_config(args.config.file, args.config.overrides);
  log::apply_config_level(config::enum_name(resolved.config.log.level));
  const auto run_dir = run::RunDirectory::open(resolved, args.run_dir, /*writer=*/env.rank == 0);
  spdlog::info("dla train: run '{}' in {}", resolved.config.run.name, run_dir.root.string());
  train::Trainer trainer(resolved, run_dir, env);
  if (args.resume) trainer.resume(*args.resume);
  trainer.run(args.stop_at);
  return kExitOk;
}

}  // namespace

void add_train_command(CLI::App& root, CommandList& commands) {
  auto* app = root.add_subcommand("train", "Train a model from a run config");
  auto args = std::make_shared<TrainArgs>();
  add_config_args(*app, args->config);
  app->add_option("--run-dir", args->run_dir, "Run directory (default: <run.dir>/<run.name>)");
  app->add_option("--resume", args->resume,
                  "auto: continue from the newest intact checkpoint of the run directory (if any); or a "
                  "checkpoint directory");
  app->add_option(
         "--stop-at", args->stop_at,
         "Stop after this step, save a checkpoint and exit 0 (for time-limited jobs); the schedule still "
         "runs to train.steps, so --resume continues exactly")
      ->check(CLI::PositiveNumber);
  commands.push_back({app, [args] { return train(*args); }});
}

}  // namespace dla::cli
