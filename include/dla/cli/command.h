// How subcommands plug into the `dla` binary: each adds its CLI11 sub-app and the function that runs it.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace dla::cli {

/// Exit statuses of the binary.
enum ExitStatus : int {
  kExitOk = 0,
  kExitUserError = 1,  ///< bad config, data, checkpoint or arguments found while running
  kExitUsage = 2,      ///< unknown command, flag or value
  kExitInternal = 3,   ///< a bug in dla
};

struct Command {
  CLI::App* app;
  std::function<int()> run;
};

using CommandList = std::vector<Command>;

/// `--config FILE` and repeated `--set KEY=VALUE`, shared by every command that reads a run config.
struct ConfigArgs {
  std::optional<std::string> file;
  std::vector<std::string> overrides;
};
void add_config_args(CLI::App& app, ConfigArgs& args);

void add_version_command(CLI::App& root, CommandList& commands);
void add_config_command(CLI::App& root, CommandList& commands);
void add_inspect_command(CLI::App& root, CommandList& commands);
void add_train_command(CLI::App& root, CommandList& commands);
void add_launch_command(CLI::App& root, CommandList& commands);
void add_eval_command(CLI::App& root, CommandList& commands);
void add_import_fla_command(CLI::App& root, CommandList& commands);
void add_score_command(CLI::App& root, CommandList& commands);
void add_generate_command(CLI::App& root, CommandList& commands);
void add_tokenizer_command(CLI::App& root, CommandList& commands);
void add_data_command(CLI::App& root, CommandList& commands);
void add_checkpoint_command(CLI::App& root, CommandList& commands);
void add_bench_command(CLI::App& root, CommandList& commands);

/// Parses the command line, runs the chosen command and returns the process exit status.
int run(int argc, char** argv);

}  // namespace dla::cli
