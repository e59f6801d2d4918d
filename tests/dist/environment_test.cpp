// Reading a job's layout from launcher variables.
#include "dla/dist/environment.h"

#include <map>

#include "catch.h"
#include "dla/util/error.h"

namespace dla::dist {
namespace {

GetEnv fake(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
}

}  // namespace

TEST_CASE("no launcher variables: a single process", "[dist]") {
  const auto env = read_environment(fake({}));
  CHECK(env.rank == 0);
  CHECK(env.world_size == 1);
  CHECK_FALSE(env.distributed());
  CHECK(env.launcher == "none");
}

TEST_CASE("torchrun-style variables give the rank, local rank and rendezvous address", "[dist]") {
  const auto env = read_environment(fake({{"RANK", "5"},
                                          {"WORLD_SIZE", "8"},
                                          {"LOCAL_RANK", "1"},
                                          {"LOCAL_WORLD_SIZE", "4"},
                                          {"MASTER_ADDR", "node0"},
                                          {"MASTER_PORT", "29555"}}));
  CHECK(env.rank == 5);
  CHECK(env.world_size == 8);
  CHECK(env.local_rank == 1);
  CHECK(env.local_world_size == 4);
  CHECK(env.master_addr == "node0");
  CHECK(env.master_port == 29555);
  CHECK(env.distributed());
  CHECK(env.launcher == "env");
}

TEST_CASE("srun's variables are recognised, and the master is the first node", "[dist]") {
  const auto env = read_environment(fake({{"SLURM_PROCID", "3"},
                                          {"SLURM_STEP_NUM_TASKS", "4"},
                                          {"SLURM_LOCALID", "1"},
                                          {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"},
                                          {"SLURM_STEP_NODELIST", "gpu[07-08]"}}));
  CHECK(env.launcher == "slurm");
  CHECK(env.rank == 3);
  CHECK(env.world_size == 4);
  CHECK(env.local_rank == 1);
  CHECK(env.local_world_size == 2);
  CHECK(env.master_addr == "gpu07");
  CHECK(env.master_port == 29500);
  // A batch script without srun has SLURM_PROCID but no step: one process, not a job that waits for others.
  CHECK_FALSE(read_environment(fake({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}})).distributed());
}

TEST_CASE("first_slurm_host expands the first entry of a node list", "[dist]") {
  CHECK(first_slurm_host("gpu[07-09,12],login1") == "gpu07");
  CHECK(first_slurm_host("node3,node4") == "node3");
  CHECK(first_slurm_host("a[1,2]-ib") == "a1-ib");
  CHECK(first_slurm_host("single") == "single");
  CHECK_THROWS_AS(first_slurm_host("gpu[07-09"), UserError);
}

TEST_CASE("malformed launcher variables are errors naming the variable", "[dist]") {
  using test::has_substr;
  CHECK_THROWS_WITH(read_environment(fake({{"RANK", "one"}, {"WORLD_SIZE", "2"}})), has_substr("RANK='one'"));
  CHECK_THROWS_WITH(read_environment(fake({{"RANK", "2"}, {"WORLD_SIZE", "2"}})), has_substr("RANK=2"));
  CHECK_THROWS_WITH(read_environment(fake({{"RANK", "0"}})), has_substr("WORLD_SIZE"));
  CHECK_THROWS_WITH(read_environment(fake({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}})),
                    has_substr("MASTER_PORT=70000"));
  CHECK_THROWS_WITH(
      read_environment(
          fake({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "2"}})),
      has_substr("local rank 3"));
}

}  // namespace dla::dist
