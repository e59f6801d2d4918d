// `dla eval` end to end: a suite on checkpoints side by side, reports, sharding over ranks, and bad input.
#include <nlohmann/json.hpp>

#include "catch.h"
#include "test_util.h"

namespace dla::cli {
namespace {

namespace fs = std::filesystem;
using test::has_substr;
using test::run_dla;

// A tiny byte-level model trained for two steps: enough for numbers that differ from checkpoint to
// checkpoint.
fs::path tiny_checkpoint(const fs::path& dir, int seed) {
  const auto result = run_dla(
      fmt::format(
          "train --config configs/quickstart.yaml --set model.vocab_size=258 --set model.num_layers=1 "
          "--set train.steps=2 --set train.batch_size=2 --set train.seq_len=32 --set "
          "data.mqar.eval_examples=2 "
          "--set run.seed={} --run-dir '{}'",
          seed, (dir / "run").string()),
      DLA_SOURCE_DIR);
  INFO(result.output);
  REQUIRE(result.status == 0);
  return dir / "run" / "model";
}

void write_suite(const fs::path& dir) {
  test::write_text(
      dir / "docs.jsonl",
      "{\"q\": \"Sky?\", \"a\": \"blue\", \"b\": \"green\", \"label\": 0, \"text\": \"The sky is blue.\"}\n"
      "{\"q\": \"Grass?\", \"a\": \"blue\", \"b\": \"green\", \"label\": 1, \"text\": \"Grass is green.\"}\n"
      "{\"q\": \"Sun?\", \"a\": \"yellow\", \"b\": \"grey\", \"label\": 0, \"text\": \"The sun.\"}\n");
  test::write_text(dir / "suite.yaml", R"(suite: tiny
batch_size: 2
tasks:
  - name: text
    type: perplexity
    data: {file: docs.jsonl}
  - name: colours
    type: multiple_choice
    data: {file: docs.jsonl}
    context: "{q}"
    choices: ["{a}", "{b}"]
  - name: keys
    type: mqar
    generator: {examples: 6, seq_len: 32, num_kv_pairs: 4}
  - name: passkey
    type: passkey
    max_new_tokens: 4
    generator: {lengths: [300, 400], depths: [0.0, 1.0], samples: 1}
  - name: absent
    type: cloze
    optional: true
    data: {file: nothing.jsonl}
    context: "{q}"
    target: "{a}"
)");
}

}  // namespace

TEST_CASE("dla eval writes JSON, Markdown, CSV and plots with checkpoints side by side", "[cli][eval]") {
  test::TempDir dir;
  write_suite(dir.path());
  const auto first = tiny_checkpoint(dir / "one", 1);
  const auto second = tiny_checkpoint(dir / "two", 2);
  const auto result =
      run_dla(fmt::format("eval --config '{}' --checkpoint '{},{}' --data-root '{}' --out '{}' --device cpu",
                          (dir / "suite.yaml").string(), first.string(), second.string(), dir.path().string(),
                          (dir / "out").string()));
  INFO(result.output);
  REQUIRE(result.status == 0);
  CHECK_THAT(result.output, has_substr("absent skipped (optional)"));
  const auto json = nlohmann::json::parse(test::read_text(dir / "out" / "results.json"));
  REQUIRE(json.at("checkpoints").size() == 2);
  const auto& tasks = json.at("checkpoints")[0].at("tasks");
  REQUIRE(tasks.size() == 5);
  CHECK(tasks[0].at("n") == 3);
  CHECK(tasks[0].at("metrics").contains("bits_per_byte"));
  CHECK(tasks[1].at("metrics").contains("acc_norm"));
  CHECK(tasks[3].at("grid").at("accuracy").size() == 2);
  CHECK(tasks[4].contains("skipped"));
  CHECK(json.at("versions").contains("commit"));
  CHECK_THAT(json.at("suite_yaml").get<std::string>(), has_substr("name: colours"));
  const std::string md = test::read_text(dir / "out" / "results.md");
  CHECK_THAT(md, has_substr(first.string()));
  CHECK_THAT(md, has_substr(second.string()));
  CHECK_THAT(test::read_text(dir / "out" / "results.csv"), has_substr("colours,1,acc,"));
  bool position_plot = false, heatmap = false;
  for (const auto& entry : fs::directory_iterator(dir / "out")) {
    const std::string name = entry.path().filename().string();
    position_plot |= name.starts_with("text-") && name.ends_with("loss-by-position.svg");
    heatmap |= name.starts_with("passkey-") && name.ends_with("heatmap.svg");
  }
  CHECK(position_plot);
  CHECK(heatmap);

  // The same suite shared out over 2 ranks gives the same numbers.
  const auto sharded = run_dla(fmt::format(
      "launch --nproc-per-node 2 -- eval --config '{}' --checkpoint '{}' --data-root '{}' --out '{}' "
      "--device cpu",
      (dir / "suite.yaml").string(), first.string(), dir.path().string(), (dir / "sharded").string()));
  INFO(sharded.output);
  REQUIRE(sharded.status == 0);
  const auto split = nlohmann::json::parse(test::read_text(dir / "sharded" / "results.json"));
  const auto& split_tasks = split.at("checkpoints")[0].at("tasks");
  for (size_t t = 0; t < 4; ++t) {
    for (const auto& [metric, value] : tasks[t].at("metrics").items()) {
      CAPTURE(t, metric);
      CHECK(std::abs(split_tasks[t].at("metrics").at(metric).get<double>() - value.get<double>()) <=
            1e-6 * std::max(1.0, std::abs(value.get<double>())));
    }
  }
}

TEST_CASE("dla eval names the file and line of broken data, and refuses missing data", "[cli][eval]") {
  test::TempDir dir;
  write_suite(dir.path());
  const auto checkpoint = tiny_checkpoint(dir.path(), 1);
  test::write_text(
      dir / "docs.jsonl",
      "{\"q\": \"Sky?\", \"a\": \"blue\", \"b\": \"x\", \"label\": 0, \"text\": \"t\"}\n{oops\n");
  const auto broken = run_dla(fmt::format("eval --config '{}' --checkpoint '{}' --data-root '{}' --out '{}'",
                                          (dir / "suite.yaml").string(), checkpoint.string(),
                                          dir.path().string(), (dir / "out").string()));
  CHECK(broken.status == 1);
  CHECK_THAT(broken.output, has_substr("docs.jsonl:2: not valid JSON"));
  const auto no_root =
      run_dla(fmt::format("eval --config '{}' --checkpoint '{}' --out '{}'", (dir / "suite.yaml").string(),
                          checkpoint.string(), (dir / "out").string()));
  CHECK(no_root.status == 1);
  CHECK_THAT(no_root.output, has_substr("task 'text'"));
  CHECK_THAT(no_root.output, has_substr("does not exist"));
}

}  // namespace dla::cli
