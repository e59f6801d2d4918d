// The `dla` binary's command line: exit statuses and messages for good and bad usage.
#include "catch.h"
#include "test_util.h"

namespace dla::test {

TEST_CASE("dla --help lists the subcommands and each has --help", "[cli]") {
  const auto help = run_dla("--help");
  CHECK(help.status == 0);
  CHECK_THAT(help.output, has_substr("version") && has_substr("config"));
  for (const char* command :
       {"version --help", "config --help", "config show --help", "config docs --help"}) {
    CAPTURE(command);
    const auto result = run_dla(command);
    CHECK(result.status == 0);
    CHECK_THAT(result.output, has_substr("Usage:"));
  }
}

TEST_CASE("dla version names dla, LibTorch, CUDA, NCCL and the GPUs", "[cli]") {
  const auto result = run_dla("version");
  CHECK(result.status == 0);
  CHECK_THAT(result.output, has_substr("dla 0.") && has_substr("LibTorch 2.") && has_substr("CUDA: ") &&
                                has_substr("NCCL: ") && has_substr("GPUs: "));
}

TEST_CASE("bad usage prints usage and exits with status 2", "[cli]") {
  struct Case {
    const char* args;
    const char* message;
  };
  for (const Case& c :
       {Case{"", "'dla' needs a subcommand"}, Case{"trian", "not expected: trian"},
        Case{"verison", "did you mean 'version'?"}, Case{"version --frobnicate", "--frobnicate"},
        Case{"--log-level loud version", "loud not in {trace,debug,info,warn,error}"},
        Case{"config", "'config' needs a subcommand"},
        Case{"config show --config /nonexistent.yaml", "/nonexistent.yaml"}}) {
    CAPTURE(c.args);
    const auto result = run_dla(c.args);
    CHECK(result.status == 2);
    CHECK_THAT(result.output, has_substr(c.message) && has_substr("Usage:"));
  }
}

TEST_CASE("dla config show prints the resolved config; bad configs exit 1 with the place", "[cli]") {
  TempDir dir;
  write_text(dir / "run.yaml", "run:\n  name: cli\n  sed: 3\n");
  const auto bad = run_dla("config show --config run.yaml", dir.path());
  CHECK(bad.status == 1);
  CHECK_THAT(bad.output, has_substr("run.yaml:3:3") && has_substr("did you mean 'run.seed'?"));

  write_text(dir / "run.yaml", "run:\n  name: cli\n");
  const auto good =
      run_dla("config show --config run.yaml --set run.seed=5 --set log.level=warn", dir.path());
  CHECK(good.status == 0);
  CHECK_THAT(good.output, has_substr("name: cli") && has_substr("seed: 5") && has_substr("level: warn"));

  const auto bad_value = run_dla("config show --set run.seed=five");
  CHECK(bad_value.status == 1);
  CHECK_THAT(bad_value.output, has_substr("--set run.seed=five: run.seed: expected an integer, got 'five'"));
}

TEST_CASE("a model too large for memory exits 1 with what to change, not an abort", "[cli]") {
  // 10¹² embedding rows: the first allocation fails at once, on any machine.
  const auto result = run_dla(
      "bench model --config configs/quickstart.yaml --set model.vocab_size=1000000000000 --set "
      "train.device=cpu",
      DLA_SOURCE_DIR);
  CHECK(result.status == 1);
  CHECK_THAT(result.output, has_substr("out of host memory"));
  CHECK_THAT(result.output, has_substr("lower train.batch_size"));
}

}  // namespace dla::test
