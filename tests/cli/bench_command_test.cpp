// `dla bench layer`: the kernel choice (flag and DLA_KERNELS), the kernel profile and the softmax-attention
// baseline; `dla bench model`: the report and its profile; `dla bench suite`: its files and errors.
#include <cstdlib>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "test_util.h"

namespace dla::test {

namespace {
constexpr const char* kSmallLayer = "bench layer -B 1 -T 40 -H 1 -D 8 --device cpu --warmup 0 --iters 1";
}

TEST_CASE("dla bench layer runs either kernel path and profiles one forward+backward", "[cli][fused]") {
  const TempDir dir;
  for (const char* kernels : {"aten", "fused"}) {
    CAPTURE(kernels);
    const auto result = run_dla_stdout(std::string(kSmallLayer) + " --kernels " + kernels + " --profile " +
                                       (dir.path() / "trace.json").string());
    REQUIRE(result.status == 0);
    const auto report = nlohmann::json::parse(result.output);
    CHECK(report.at("kernels") == kernels);
    CHECK(report.at("fwd_bwd_ms").get<double>() > 0);
    REQUIRE(report.at("profile").is_array());
    CHECK_FALSE(report.at("profile").empty());
    CHECK(std::filesystem::file_size(dir.path() / "trace.json") > 0);
    std::filesystem::remove(dir.path() / "trace.json");
  }
}

TEST_CASE("DLA_KERNELS picks the kernel path; a bad value fails any command with the variable named",
          "[cli][fused]") {
  ::setenv("DLA_KERNELS", "fused", 1);
  const auto fused = run_dla_stdout(kSmallLayer);
  ::setenv("DLA_KERNELS", "triton", 1);
  const auto bad = run_dla(kSmallLayer);
  const auto bad_version = run_dla("version");
  ::unsetenv("DLA_KERNELS");
  REQUIRE(fused.status == 0);
  CHECK(nlohmann::json::parse(fused.output).at("kernels") == "fused");
  CHECK(bad.status == 1);
  CHECK_THAT(bad.output, has_substr("DLA_KERNELS: expected auto, aten or fused, got 'triton'"));
  CHECK(bad_version.status == 1);
  const auto bad_flag = run_dla(std::string(kSmallLayer) + " --kernels triton");
  CHECK(bad_flag.status == 2);
  CHECK_THAT(bad_flag.output, has_substr("--kernels"));
}

TEST_CASE("dla bench layer times the softmax-attention baseline, which takes no memory policy", "[cli]") {
  const auto result = run_dla_stdout(std::string(kSmallLayer) + " --mixer sdpa");
  INFO(result.output);
  REQUIRE(result.status == 0);
  const auto report = nlohmann::json::parse(result.output);
  CHECK(report.at("op") == "causal softmax attention (SDPA)");
  CHECK(report.at("fwd_bwd_ms").get<double>() > 0);
  const auto with_policy = run_dla(std::string(kSmallLayer) + " --mixer sdpa --memory dla");
  CHECK(with_policy.status == 1);
  CHECK_THAT(with_policy.output, has_substr("--memory must be single"));
}

TEST_CASE("dla bench model reports training steps of a config and profiles one more", "[cli]") {
  const TempDir dir;
  const auto result = run_dla_stdout(
      "bench model --config configs/quickstart.yaml --set model.num_layers=1 --set train.batch_size=4 "
      "--set train.device=cpu --warmup 0 --steps 1 --profile " +
          (dir.path() / "step.json").string(),
      DLA_SOURCE_DIR);
  INFO(result.output);
  REQUIRE(result.status == 0);
  const auto report = nlohmann::json::parse(result.output);
  CHECK(report.at("batch") == 4);
  CHECK(report.at("ranks") == 1);
  CHECK(report.at("tokens_per_s").get<double>() > 0);
  REQUIRE(report.at("profile").is_array());
  CHECK_FALSE(report.at("profile").empty());
  CHECK(std::filesystem::file_size(dir.path() / "step.json") > 0);
}

TEST_CASE(
    "dla bench suite runs the entries asked for, writes its files and prints the summary; a bad suite "
    "exits 1 with the key named",
    "[cli]") {
  const TempDir dir;
  write_text(dir / "suite.yaml",
             "defaults: {device: cpu, dtype: float32, heads: 1, head_dim: 8, warmup: 0, iters: 1}\n"
             "layers: [{name: gdn, shapes: [[1, 40]], compare: [{reference: fla, fwd_bwd_ms: [1000000]}]},\n"
             "         {name: mamba2, mixer: mamba2, shapes: [[1, 40]]}]\n");
  const auto result = run_dla_stdout("bench suite --only gdn " + (dir / "suite.yaml").string() + " --out " +
                                     (dir / "out").string());
  INFO(result.output);
  REQUIRE(result.status == 0);
  CHECK_THAT(result.output, has_substr("# Benchmark suite `suite`"));
  CHECK_THAT(result.output, has_substr("| gdn | (1, 40, 1, 8) | cpu |"));
  const std::string results = read_text(dir / "out" / "results.jsonl");
  CHECK(results.find("\"entry\":\"gdn\"") != std::string::npos);
  CHECK(results.find("\"entry\":\"mamba2\"") == std::string::npos);  // left out by --only
  CHECK(read_text(dir / "out" / "summary.md") == result.output);

  write_text(dir / "bad.yaml", "layers: [{name: gdn, shapes: [[1, 40]], iterations: 3}]\n");
  const auto bad = run_dla("bench suite " + (dir / "bad.yaml").string() + " --out " + (dir / "bad").string());
  CHECK(bad.status == 1);
  CHECK_THAT(bad.output, has_substr("unknown key 'iterations'"));
  CHECK_FALSE(std::filesystem::exists(dir / "bad"));
}

}  // namespace dla::test
