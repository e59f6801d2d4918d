// `dla launch`: runs a data-parallel job's workers on this node.
#include "dla/cli/command.h"
#include "dla/dist/launcher.h"

namespace dla::cli {

void add_launch_command(CLI::App& root, CommandList& commands) {
  auto* app = root.add_subcommand(
      "launch",
      "Start the workers of a data-parallel job on this node: dla launch --nproc-per-node N -- train ...");
  auto options = std::make_shared<dist::LaunchOptions>();
  app->add_option("--nproc-per-node", options->nproc_per_node, "Workers on this node (one per GPU on CUDA)")
      ->capture_default_str();
  app->add_option("--nnodes", options->nnodes, "Nodes in the job")->capture_default_str();
  app->add_option("--node-rank", options->node_rank, "This node's index, 0 .. nnodes-1")
      ->capture_default_str();
  app->add_option("--master-addr", options->master_addr, "Host of node 0, which serves the rendezvous store")
      ->capture_default_str();
  app->add_option("--master-port", options->master_port,
                  "Port of the rendezvous store (default: a free port on one node, 29500 on several)");
  app->add_option("--grace-period-s", options->grace_period_s,
                  "After a worker fails, seconds the others get to stop on SIGTERM before SIGKILL")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app->add_option("command", options->command, "The workers' dla command and its options, after `--`")
      ->required();
  app->footer(
      "Example: dla launch --nproc-per-node 4 -- train --config configs/lm/python-docs-tiny.yaml\n"
      "Several nodes: run the same command on each with --nnodes M --node-rank R --master-addr HOST "
      "--master-port P (docs/distributed.md).");
  commands.push_back({app, [options] { return dist::launch(*options); }});
}

}  // namespace dla::cli
