// Benchmark suites: a small suite run on the CPU (its files, each comparison's ratio and verdict, and the
// ratios' picture), and the errors that name the file, entry and key of a bad suite.
#include "dla/bench/suite.h"

#include <fmt/format.h>

#include <sstream>
#include <vector>

#include <ATen/Context.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "dla/util/error.h"
#include "test_util.h"

namespace dla::test {
namespace {

constexpr const char* kDefaults =
    "defaults: {device: cpu, dtype: float32, heads: 1, head_dim: 8, warmup: 0, iters: 1, chunk: 8}\n";

bench::BenchSuite suite_from(const TempDir& dir, const std::string& yaml) {
  write_text(dir / "suite.yaml", yaml);
  return bench::load_bench_suite(dir / "suite.yaml");
}

std::vector<nlohmann::json> read_results(const std::filesystem::path& file) {
  std::vector<nlohmann::json> out;
  std::istringstream lines(read_text(file));
  for (std::string line; std::getline(lines, line);)
    out.push_back(nlohmann::json::parse(line));
  return out;
}

}  // namespace

TEST_CASE("a benchmark suite runs its layers and models and sets each time against its comparisons",
          "[bench]") {
  const TempDir dir;
  const bench::BenchSuite suite = suite_from(
      dir, std::string("suite: smoke\n") + kDefaults +
               "layers:\n"
               "  - name: gdn\n"
               "    mixer: gdn\n"
               "    shapes: [[1, 40], [2, 24]]\n"
               "    compare: [{reference: slow and fast, fwd_bwd_ms: [1000000, 0.000001], target_ratio: 1}]\n"
               "  - name: fenwick\n"
               "    mixer: mamba2\n"
               "    memory: fenwick\n"
               "    max_length: 64\n"
               "    shapes: [[1, 40], [2, 24]]\n"
               "    compare: [{entry: gdn, target_ratio: 1000000}]\n"
               "  - {name: attention, mixer: sdpa, kernels: aten, shapes: [[1, 40]]}\n"
               "models:\n"
               "  - config: " DLA_SOURCE_DIR
               "/configs/quickstart.yaml\n"
               "    set: [model.num_layers=1, train.batch_size=2, train.seq_len=32, train.device=cpu]\n"
               "    warmup: 0\n"
               "    steps: 1\n"
               "    target_tokens_per_s: 1000000000000\n");
  REQUIRE(suite.name == "smoke");
  REQUIRE(suite.layers.size() == 3);
  CHECK(suite.layers[1].options.memory == "fenwick");
  CHECK(suite.layers[1].options.heads == 1);  // from the defaults

  const auto summary_file = bench::run_bench_suite(suite, dir / "out");
  const std::vector<nlohmann::json> results = read_results(dir / "out" / "results.jsonl");
  REQUIRE(results.size() == 6);  // 2 + 2 + 1 layer shapes, 1 model
  CHECK(results[0].at("entry") == "gdn");
  CHECK(results[0].at("B") == 1);
  CHECK(results[1].at("B") == 2);
  CHECK(results[2].at("memory") == "fenwick");
  CHECK(results[4].at("kernels") == "aten");
  CHECK(results[5].at("kind") == "model");
  CHECK(results[5].at("tokens_per_s").get<double>() > 0);

  const std::string summary = read_text(summary_file);
  CHECK_THAT(summary, has_substr("# Benchmark suite `smoke`"));
  // gdn against the reference: far faster than 1e6 ms (met), far slower than 1e-6 ms (missed).
  CHECK_THAT(summary, has_substr("| slow and fast | 1000000 |"));
  CHECK_THAT(summary, has_substr("| ≤ 1.00 | yes |"));
  CHECK_THAT(summary, has_substr("| ≤ 1.00 | **no** |"));
  // fenwick against the gdn entry at the same shape: the ratio of the two measured times.
  // Times print with two decimals below 100 ms and as whole milliseconds from there.
  const double gdn_ms = results[0].at("fwd_bwd_ms").get<double>();
  const double ratio = results[2].at("fwd_bwd_ms").get<double>() / gdn_ms;
  CHECK_THAT(summary, has_substr(fmt::format("| gdn | {:.{}f} | {:.2f} | ≤ 1000000 | yes |", gdn_ms,
                                             gdn_ms >= 100 ? 0 : 2, ratio)));
  CHECK_THAT(summary, has_substr("| attention | (1, 40, 1, 8) | cpu |"));
  CHECK_THAT(summary, has_substr("| quickstart | cpu | 2 × 32 |"));
  CHECK_THAT(summary, has_substr("| 1000000000000 | **no** |"));

  // The ratios' picture: a bar per comparison that has both times (gdn's two against the reference, fenwick's
  // two against gdn; attention compares with nothing), green where met and red where missed.
  const std::string svg = read_text(dir / "out" / "ratios.svg");
  CHECK_THAT(svg, has_substr("Suite smoke"));
  const auto count = [&](const std::string& text) {
    size_t n = 0;
    for (size_t at = svg.find(text); at != std::string::npos; at = svg.find(text, at + 1))
      ++n;
    return n;
  };
  CHECK(count("class=\"bar\"") == 4);
  CHECK(count("fill=\"#2ca02c\"") == 3);
  CHECK(count("fill=\"#d62728\"") == 1);
  CHECK_THAT(svg, has_substr("fenwick (B 2, T 24) vs gdn"));
}

TEST_CASE("a suite narrowed to some entries keeps them in order and refuses unknown names", "[bench]") {
  const TempDir dir;
  const bench::BenchSuite suite = suite_from(
      dir, std::string(kDefaults) +
               "layers: [{name: a, shapes: [[1, 8]]}, {name: b, shapes: [[1, 8]], compare: [{entry: a}]}]\n"
               "models: [{name: m, config: x.yaml}]\n");
  const bench::BenchSuite narrowed = bench::only_entries(suite, {"m", "b"});
  REQUIRE(narrowed.layers.size() == 1);
  CHECK(narrowed.layers[0].name == "b");
  REQUIRE(narrowed.models.size() == 1);
  REQUIRE_THROWS_WITH(bench::only_entries(suite, {"c"}),
                      has_substr("--only 'c': ") && has_substr("its entries: a, b, m"));
}

TEST_CASE("the issue's suite file reads", "[bench]") {
  const bench::BenchSuite suite = bench::load_bench_suite(DLA_SOURCE_DIR "/configs/bench/issue9.yaml");
  CHECK(suite.name == "issue-9");
  REQUIRE(suite.layers.size() == 5);
  CHECK(suite.layers[4].options.memory == "dla");
  CHECK(suite.layers[4].compare.size() == 2);
  REQUIRE(suite.models.size() == 4);
  CHECK(suite.models[0].target_tokens_per_s == 85000);
  CHECK(suite.models[3].name == "gdn-dla-400m graphs");
  CHECK(suite.models[3].target_tokens_per_s == 60000);
}

TEST_CASE("a bad benchmark suite is refused with its file, entry and key named", "[bench]") {
  const TempDir dir;
  const auto refused = [&](const std::string& yaml) {
    try {
      suite_from(dir, yaml);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    FAIL("the suite was accepted:\n" << yaml);
    return std::string();
  };
  const std::string layers = std::string(kDefaults) + "layers:\n";
  CHECK_THAT(refused(layers + "  - {name: a, mixr: gdn, shapes: [[1, 8]]}\n"),
             has_substr("layers[0]: unknown key 'mixr'"));
  CHECK_THAT(refused(layers + "  - {name: a, mixer: rnn, shapes: [[1, 8]]}\n"),
             has_substr("layers[0] ('a'): mixer 'rnn' is not one of gdn, mamba2, sdpa"));
  CHECK_THAT(refused(layers + "  - {name: a, mixer: sdpa, memory: dla, shapes: [[1, 8]]}\n"),
             has_substr("memory must be single"));
  CHECK_THAT(refused(layers + "  - {name: a, shapes: [1, 8]}\n"),
             has_substr("'shapes' must list [batch, tokens] pairs"));
  CHECK_THAT(refused(layers + "  - {name: a, heads: 0, shapes: [[1, 8]]}\n"),
             has_substr("heads must be at least 1"));
  CHECK_THAT(refused(layers +
                     "  - {name: a, shapes: [[1, 8], [2, 8]], compare: [{reference: x, fwd_bwd_ms: [1]}]}\n"),
             has_substr("compare[0]: 'fwd_bwd_ms' needs one time per shape (2), got 1"));
  CHECK_THAT(refused(layers + "  - {name: a, shapes: [[1, 8]], compare: [{entry: nope}]}\n"),
             has_substr("layer 'a' is compared with entry 'nope', which is not another layer entry"));
  CHECK_THAT(
      refused(layers +
              "  - {name: a, shapes: [[1, 8]]}\n  - {name: b, shapes: [[2, 8]], compare: [{entry: a}]}\n"),
      has_substr("whose shapes differ"));
  CHECK_THAT(refused(layers + "  - {name: a, shapes: [[1, 8]]}\n  - {name: a, shapes: [[1, 8]]}\n"),
             has_substr("two entries are named 'a'"));
  CHECK_THAT(refused(std::string(kDefaults)), has_substr("lists no 'layers' and no 'models'"));
  CHECK_THAT(refused("models: [{steps: 1}]\n"), has_substr("models[0]: the entry needs a 'config' file"));
  CHECK_THAT(refused("defaults: {dtype: float16}\nlayers: [{name: a, shapes: [[1, 8]]}]\n"),
             has_substr("dtype 'float16' is not one of"));
  CHECK_THAT(refused("layers: [{name: a, shapes: [[1, 8]]\n"), has_substr("not valid YAML"));
  REQUIRE_THROWS_WITH(bench::load_bench_suite(dir / "missing.yaml"), has_substr("benchmark suite '"));

  // A model config that cannot be read stops the suite before it measures or writes anything.
  const bench::BenchSuite bad_model =
      suite_from(dir, "models: [{config: " + (dir / "none.yaml").string() + "}]\n");
  REQUIRE_THROWS_AS(bench::run_bench_suite(bad_model, dir / "out"), UserError);
  CHECK_FALSE(std::filesystem::exists(dir / "out"));
  if (!at::hasCUDA()) {
    const bench::BenchSuite on_gpu = suite_from(dir, "layers: [{name: g, device: cuda, shapes: [[1, 8]]}]\n");
    REQUIRE_THROWS_WITH(bench::run_bench_suite(on_gpu, dir / "gpu"),
                        has_substr("suite.yaml: entry 'g': --device cuda, but no CUDA device is available"));
  }
  write_text(dir / "file", "");
  const bench::BenchSuite one_layer = suite_from(dir, layers + "  - {name: a, shapes: [[1, 8]]}\n");
  REQUIRE_THROWS_WITH(bench::run_bench_suite(one_layer, dir / "file"), has_substr("is not a directory"));
}

}  // namespace dla::test
