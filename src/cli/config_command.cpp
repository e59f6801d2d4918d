// `dla config show|docs`: the resolved run config, and the reference of every key.
#include <iostream>

#include "dla/cli/command.h"
#include "dla/config/run_config.h"

namespace dla::cli {

void add_config_command(CLI::App& root, CommandList& commands) {
  auto* group = root.add_subcommand("config", "Inspect run configs");

  auto* show = group->add_subcommand("show", "Print the resolved run config: defaults, --config, then --set");
  auto args = std::make_shared<ConfigArgs>();
  add_config_args(*show, *args);
  commands.push_back({show, [args] {
                        std::cout << config::resolve_run_config(args->file, args->overrides).to_yaml();
                        return kExitOk;
                      }});

  auto* docs = group->add_subcommand("docs", "Print the reference of every config key as Markdown");
  commands.push_back({docs, [] {
                        std::cout << config::run_config_markdown();
                        return kExitOk;
                      }});
}

}  // namespace dla::cli
