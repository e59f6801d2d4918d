// The `dla` command line: builds the subcommand tree, parses, dispatches, and turns errors into exit
// statuses (usage 2, user error 1, bug 3).
#include <iostream>
#include <string_view>

#include <c10/util/Exception.h>
#include <c10/util/Logging.h>

#include "dla/build_info.h"
#include "dla/cli/command.h"
#include "dla/config/schema.h"
#include "dla/ops/kernels.h"
#include "dla/util/error.h"
#include "dla/util/log.h"

namespace dla::cli {
namespace {

// The most specific subcommand the user named, for printing its usage after an error.
const CLI::App* deepest_selected(const CLI::App& app) {
  const CLI::App* current = &app;
  while (true) {
    const auto selected = current->get_subcommands();
    if (selected.empty()) return current;
    current = selected.front();
  }
}

// For "dla trian": the nearest subcommand name, as " (did you mean 'train'?)".
std::string suggest_subcommand(const CLI::App& app, const CLI::ParseError& error) {
  if (dynamic_cast<const CLI::ExtrasError*>(&error) == nullptr) return "";
  const std::string message = error.what();
  const auto colon = message.rfind(": ");
  if (colon == std::string::npos) return "";
  const std::string word = message.substr(colon + 2);
  std::vector<std::string> names;
  for (const auto* sub : app.get_subcommands({}))
    names.push_back(sub->get_name());
  const auto close = config::nearest(word, names);
  return close ? " (did you mean '" + *close + "'?)" : "";
}

}  // namespace

void add_config_args(CLI::App& app, ConfigArgs& args) {
  app.add_option("-c,--config", args.file, "Run config (YAML)")->check(CLI::ExistingFile);
  app.add_option("--set", args.overrides, "Override one key: --set optim.lr=3e-4 (repeatable)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
}

int run(int argc, char** argv) {
  CLI::App app{
      "dla: pre-training and evaluation of linear-attention language models (DLA, Mamba-2, "
      "Gated DeltaNet)",
      "dla"};
  app.fallthrough();  // global flags such as --log-level may also follow the subcommand
  app.set_version_flag("-V,--version", std::string("dla ") + DLA_VERSION);
  std::string log_level = "info";
  auto* log_level_option = app.add_option("--log-level", log_level, "Console and log file verbosity")
                               ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
                               ->capture_default_str();

  CommandList commands;
  add_version_command(app, commands);
  add_config_command(app, commands);
  add_train_command(app, commands);
  add_launch_command(app, commands);
  add_eval_command(app, commands);
  add_bench_command(app, commands);
  add_inspect_command(app, commands);
  add_import_fla_command(app, commands);
  add_score_command(app, commands);
  add_generate_command(app, commands);
  add_tokenizer_command(app, commands);
  add_data_command(app, commands);
  add_checkpoint_command(app, commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const CLI::App* where = deepest_selected(app);
    std::cerr << "error: " << e.what() << suggest_subcommand(*where, e) << "\n\n" << where->help();
    return kExitUsage;
  }

  log::init(log_level, /*forced=*/log_level_option->count() > 0);
  // LibTorch's failed checks must reach the handlers below as exceptions, never abort the process.
  FLAGS_caffe2_use_fatal_for_enforce = false;
  const CLI::App* chosen = deepest_selected(app);
  for (const auto& command : commands) {
    if (command.app != chosen) continue;
    try {
      // A bad DLA_KERNELS fails every command up front rather than the first op that reads it.
      ops::kernel_choice();
      return command.run();
    } catch (const UserError& e) {
      spdlog::error("{}", e.what());
      return kExitUserError;
    } catch (const c10::OutOfMemoryError& e) {
      // Not a bug: the run asks for more device memory than there is.
      spdlog::error("out of device memory: {}", e.what_without_backtrace());
      spdlog::error("lower train.batch_size or train.seq_len, or set train.activation_checkpointing: true");
      return kExitUserError;
    } catch (const c10::Error& e) {
      // LibTorch's CPU allocator reports a failed allocation as a failed check, not as OutOfMemoryError.
      if (std::string_view(e.what_without_backtrace()).find("DefaultCPUAllocator") !=
          std::string_view::npos) {
        spdlog::error("out of host memory: {}", e.what_without_backtrace());
        spdlog::error("lower train.batch_size or train.seq_len, or the model's size");
        return kExitUserError;
      }
      spdlog::error("internal error in LibTorch (a bug in dla; please report it): {}",
                    e.what_without_backtrace());
      return kExitInternal;
    } catch (const std::exception& e) {
      spdlog::error("internal error (a bug in dla; please report it): {}", e.what());
      return kExitInternal;
    }
  }
  // A command group (such as `dla config`) named without one of its subcommands.
  std::cerr << "error: '" << chosen->get_name() << "' needs a subcommand\n\n" << chosen->help();
  return kExitUsage;
}

}  // namespace dla::cli
