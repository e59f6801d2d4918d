// Where this process sits in a job, read from the environment that a launcher set: `dla launch` and
// torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or SLURM's srun
// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace dla::dist {

struct DistEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  ///< picks the GPU on a node
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";  ///< host of rank 0, which serves the rendezvous store
  int master_port = 29500;
  std::string launcher = "none";  ///< "env" (dla launch, torchrun), "slurm" or "none"

  bool distributed() const { return world_size > 1; }
};

using GetEnv = std::function<std::optional<std::string>(const std::string&)>;

/// The process environment.
std::optional<std::string> system_getenv(const std::string& name);

/// Reads the job's layout from the variables a launcher sets; RANK/WORLD_SIZE win over SLURM's. Without
/// either, a single process. Malformed or inconsistent values are a UserError naming the variable.
DistEnvironment read_environment(const GetEnv& getenv = system_getenv);

/// The first host of a SLURM node list ("gpu[07-09,12],login1" gives "gpu07").
std::string first_slurm_host(std::string_view nodelist);

}  // namespace dla::dist
