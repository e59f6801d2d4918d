// `dla launch`: starts the workers of one node (the same binary), gives each its place in the job through
// the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), forwards
// SIGINT/SIGTERM/SIGHUP to them, and when one fails stops the others and exits with the failing worker's
// status.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace dla::dist {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  std::optional<int> master_port;    ///< default: a free port on one node, 29500 on several
  double grace_period_s = 30;        ///< after a failure, SIGTERM to the others, then SIGKILL after this long
  std::string program;               ///< the worker binary; empty: this one
  std::vector<std::string> command;  ///< the worker's arguments (a dla subcommand and its options)
};

/// Runs the job's workers on this node and returns the exit status for the launcher: 0 when all succeed,
/// else the first failing worker's (128 + signal when it was killed).
int launch(const LaunchOptions& options);

/// A TCP port that was free a moment ago on this machine.
int free_port();

}  // namespace dla::dist
