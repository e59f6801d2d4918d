// Reading a job's layout from launcher variables.
#include "dla/dist/environment.h"

#include <charconv>
#include <cstdlib>

#include "dla/util/error.h"

namespace dla::dist {
namespace {

int parse_int(const GetEnv& getenv, const std::string& name, int fallback) {
  const auto text = getenv(name);
  if (!text) return fallback;
  int value = 0;
  const char* end = text->data() + text->size();
  const auto [ptr, ec] = std::from_chars(text->data(), end, value);
  if (ec != std::errc() || ptr != end) {
    throw UserError(fmt::format("environment variable {}='{}' is not an integer", name, *text));
  }
  return value;
}

// SLURM writes tasks per node as "4(x2),3": the first count is this layout's local world size when the
// nodes are even, which is the only layout data parallelism uses.
int leading_count(const std::optional<std::string>& text, int fallback) {
  if (!text) return fallback;
  int value = 0;
  const auto [ptr, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  return ec == std::errc() && value > 0 ? value : fallback;
}

void check_layout(const DistEnvironment& env, const std::string& rank_var, const std::string& world_var) {
  if (env.world_size < 1) {
    throw UserError(fmt::format("environment variable {}={} must be at least 1", world_var, env.world_size));
  }
  if (env.rank < 0 || env.rank >= env.world_size) {
    throw UserError(fmt::format("environment variable {}={} must be in [0, {}) ({}={})", rank_var, env.rank,
                                env.world_size, world_var, env.world_size));
  }
  if (env.local_rank < 0 || env.local_world_size < 1 || env.local_rank >= env.local_world_size) {
    throw UserError(fmt::format("the local rank {} must be in [0, {}) (the processes on this node)",
                                env.local_rank, env.local_world_size));
  }
  if (env.master_port < 1 || env.master_port > 65535) {
    throw UserError(
        fmt::format("environment variable MASTER_PORT={} must be a port in 1..65535", env.master_port));
  }
}

}  // namespace

std::optional<std::string> system_getenv(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

std::string first_slurm_host(std::string_view nodelist) {
  const auto bracket = nodelist.find('[');
  const auto comma = nodelist.find(',');
  if (bracket == std::string_view::npos || (comma != std::string_view::npos && comma < bracket)) {
    return std::string(nodelist.substr(0, comma));
  }
  const auto close = nodelist.find(']', bracket);
  if (close == std::string_view::npos)
    throw UserError(fmt::format("malformed SLURM node list '{}'", nodelist));
  const std::string_view ranges = nodelist.substr(bracket + 1, close - bracket - 1);
  const std::string_view first = ranges.substr(0, ranges.find_first_of(",-"));
  std::string_view suffix = nodelist.substr(close + 1);
  suffix = suffix.substr(0, suffix.find(','));
  return fmt::format("{}{}{}", nodelist.substr(0, bracket), first, suffix);
}

DistEnvironment read_environment(const GetEnv& getenv) {
  DistEnvironment env;
  if (getenv("RANK") || getenv("WORLD_SIZE")) {
    if (!getenv("RANK") || !getenv("WORLD_SIZE")) {
      throw UserError(
          "environment variables RANK and WORLD_SIZE must be set together (a launcher sets both)");
    }
    env.launcher = "env";
    env.rank = parse_int(getenv, "RANK", 0);
    env.world_size = parse_int(getenv, "WORLD_SIZE", 1);
    env.local_rank = parse_int(getenv, "LOCAL_RANK", env.rank);
    env.local_world_size =
        parse_int(getenv, "LOCAL_WORLD_SIZE", std::max(env.world_size, env.local_rank + 1));
    env.master_addr = getenv("MASTER_ADDR").value_or(env.master_addr);
    env.master_port = parse_int(getenv, "MASTER_PORT", env.master_port);
    check_layout(env, "RANK", "WORLD_SIZE");
    return env;
  }
  // srun sets the SLURM_STEP_* variables for the tasks it starts; a batch script alone does not, so a plain
  // `dla train` in an allocation stays a single process.
  if (getenv("SLURM_PROCID") && getenv("SLURM_STEP_NUM_TASKS")) {
    env.launcher = "slurm";
    env.rank = parse_int(getenv, "SLURM_PROCID", 0);
    env.world_size = parse_int(getenv, "SLURM_STEP_NUM_TASKS", 1);
    env.local_rank = parse_int(getenv, "SLURM_LOCALID", 0);
    env.local_world_size = leading_count(getenv("SLURM_STEP_TASKS_PER_NODE"), env.local_rank + 1);
    if (const auto addr = getenv("MASTER_ADDR")) {
      env.master_addr = *addr;
    } else if (const auto nodes = getenv("SLURM_STEP_NODELIST") ? getenv("SLURM_STEP_NODELIST")
                                                                : getenv("SLURM_JOB_NODELIST")) {
      env.master_addr = first_slurm_host(*nodes);
    } else if (env.world_size > 1) {
      throw UserError("under srun, set MASTER_ADDR (or SLURM_STEP_NODELIST) to the host of rank 0");
    }
    env.master_port = parse_int(getenv, "MASTER_PORT", env.master_port);
    check_layout(env, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS");
  }
  return env;
}

}  // namespace dla::dist
