// `dla train` from the command line: bad keys exit 1 with the key; a short quickstart run leaves its files.
#include <fstream>

#include "catch.h"
#include "test_util.h"

namespace dla::test {

TEST_CASE("dla train with an unknown key exits 1 naming it", "[train][cli]") {
  TempDir dir;
  const auto result = run_dla("train --set optim.lrr=1e-3 --run-dir run", dir.path());
  CHECK(result.status == 1);
  CHECK_THAT(result.output, has_substr("optim.lrr") && has_substr("did you mean 'optim.lr'?"));
  CHECK_FALSE(std::filesystem::exists(dir / "run"));
}

TEST_CASE("dla train runs a few quickstart steps and leaves the run's files", "[train][cli]") {
  TempDir dir;
  const auto run_dir = dir / "run";
  const auto result = run_dla(
      "train --config configs/quickstart.yaml --set train.steps=3 --set train.log_every=1 "
      "--set train.device=cpu --run-dir '" +
          run_dir.string() + "'",
      DLA_SOURCE_DIR);
  INFO(result.output);
  REQUIRE(result.status == 0);
  for (const char* file : {"config.yaml", "log.txt", "metrics.jsonl", "loss.svg", "eval.json"}) {
    CAPTURE(file);
    CHECK(std::filesystem::is_regular_file(run_dir / file));
  }
  const std::string metrics = read_text(run_dir / "metrics.jsonl");
  CHECK(std::count(metrics.begin(), metrics.end(), '\n') == 3);
  CHECK_THAT(read_text(run_dir / "config.yaml"), has_substr("steps: 3"));
  CHECK_THAT(read_text(run_dir / "log.txt"), has_substr("step 3/3"));
}

TEST_CASE("a trained DLA model generates from its run's model checkpoint", "[train][cli][infer]") {
  TempDir dir;
  const auto run_dir = dir / "run";
  const auto trained = run_dla(
      "train --config configs/mqar/mamba2-dla.yaml --set train.steps=2 "
      "--set train.batch_size=4 --set data.mqar.eval_examples=4 --set train.device=cpu "
      "--run-dir '" +
          run_dir.string() + "'",
      DLA_SOURCE_DIR);
  INFO(trained.output);
  REQUIRE(trained.status == 0);
  const auto generated = run_dla_stdout("generate --checkpoint '" + (run_dir / "model").string() +
                                        "' --ids '1 2 3' --max-new 5");
  INFO(generated.output);
  REQUIRE(generated.status == 0);
  CHECK_THAT(generated.output, has_substr("\"memory_policy\":\"dla\""));
}

}  // namespace dla::test
