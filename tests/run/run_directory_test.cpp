// The run directory: where it goes, and the config it records.
#include "dla/run/run_directory.h"

#include <spdlog/spdlog.h>

#include "catch.h"
#include "test_util.h"

namespace dla::run {

TEST_CASE("RunDirectory::open writes the resolved config that reproduces the run", "[run]") {
  test::TempDir tmp;
  const auto resolved = config::resolve_run_config(
      std::nullopt, {"run.dir=" + tmp.path().string() + "/runs", "run.name=r1", "run.seed=3"});
  const RunDirectory dir = RunDirectory::open(resolved);
  CHECK(dir.root == tmp.path() / "runs" / "r1");
  REQUIRE(std::filesystem::is_regular_file(dir.config_file));
  const auto reread = config::resolve_run_config(dir.config_file.string(), {});
  CHECK(reread.config.run.seed == 3);
  CHECK(reread.to_yaml() == resolved.to_yaml());

  spdlog::info("a line for the run's log");
  spdlog::default_logger()->flush();
  CHECK_THAT(test::read_text(dir.log_file), test::has_substr("a line for the run's log"));
  spdlog::default_logger()->sinks().pop_back();  // detach this test's log file
}

TEST_CASE("RunDirectory::open reports a run directory it cannot create", "[run]") {
  test::TempDir tmp;
  test::write_text(tmp / "file", "not a folder");
  const auto resolved = config::resolve_run_config(std::nullopt, {"run.dir=" + (tmp / "file").string()});
  CHECK_THROWS_WITH(RunDirectory::open(resolved), test::has_substr("cannot create the run directory"));
}

}  // namespace dla::run
