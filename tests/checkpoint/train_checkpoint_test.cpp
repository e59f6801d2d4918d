// Training checkpoints as real scenarios: a stopped and resumed run logs the same losses as an uninterrupted
// one (bitwise on the CPU), damaged checkpoints are found and skipped, retention, an architecture change is
// refused, a process killed while saving and a full disk lose nothing, SIGTERM stops gracefully, and export
// then import gives back the weights.
#include "dla/checkpoint/train_checkpoint.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "dla/checkpoint/fla_import.h"
#include "dla/data/prepare.h"
#include "dla/train/trainer.h"
#include "test_util.h"
#include "train/train_testing.h"

namespace dla::test {
namespace {

namespace fs = std::filesystem;

/// The trainer tests' tiny model with a vocabulary for byte tokens, 6 steps, a row of metrics per step.
config::ResolvedConfig tiny_config(const std::vector<std::string>& overrides = {}) {
  std::vector<std::string> all = {"model.vocab_size=258", "train.steps=6", "train.log_every=1"};
  all.insert(all.end(), overrides.begin(), overrides.end());
  return tiny_train_config(all);
}

run::RunDirectory run_directory(const fs::path& root) {
  return test_run_directory(root);
}

/// Loss by step from a run's metrics.jsonl.
std::map<int64_t, double> losses(const fs::path& run) {
  std::map<int64_t, double> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto row = nlohmann::json::parse(line);
    if (row.contains("loss")) out[row.at("step").get<int64_t>()] = row.at("loss").get<double>();
  }
  return out;
}

void check_same_weights(model::CausalLMImpl& a, model::CausalLMImpl& b) {
  const auto b_params = b.named_parameters();
  for (const auto& item : a.named_parameters()) {
    CAPTURE(item.key());
    CHECK(at::equal(item.value(), b_params[item.key()]));
  }
}

void prepare_text(const fs::path& dir) {
  fs::create_directories(dir / "docs");
  for (int i = 0; i < 6; ++i) {
    std::string text;
    for (int j = 0; j < 30; ++j)
      text += fmt::format("line {} of document {} has a few words. ", j, i);
    write_text(dir / "docs" / fmt::format("d{}.txt", i), text);
  }
  data::PrepareOptions options;
  options.inputs = {(dir / "docs").string()};
  options.out = (dir / "data").string();
  options.val_fraction = 0;
  data::prepare_dataset(options);
}

}  // namespace

TEST_CASE("2N steps equal N steps, a stop, and N resumed steps, bitwise on the CPU", "[checkpoint][train]") {
  QuietLog quiet;
  TempDir dir;
  const std::string source = GENERATE(as<std::string>{}, "mqar", "tokens");
  CAPTURE(source);
  std::vector<std::string> data_keys;
  if (source == "tokens") {
    prepare_text(dir.path());
    data_keys = {"data.source=tokens", "data.path=" + (dir / "data").string()};
  }
  train::Trainer straight(tiny_config(data_keys), run_directory(dir / "straight"));
  straight.run();

  train::Trainer first(tiny_config(data_keys), run_directory(dir / "resumed"));
  CHECK(first.run(/*stop_at=*/3).at("stopped_at_step") == 3);
  CHECK(fs::is_directory(dir / "resumed" / "step-00000003"));
  CHECK(read_text(dir / "resumed" / "latest") == "step-00000003\n");

  train::Trainer second(tiny_config(data_keys), run_directory(dir / "resumed"));
  REQUIRE(second.resume("auto"));
  CHECK(second.state().step == 3);
  CHECK(second.state().samples_seen == 12);
  second.run();
  const auto expected = losses(dir / "straight"), got = losses(dir / "resumed");
  for (int64_t step = 1; step <= 6; ++step) {
    CAPTURE(step);
    REQUIRE(got.count(step) == 1);
    CHECK(got.at(step) == expected.at(step));
  }
  check_same_weights(*straight.model(), *second.model());
}

TEST_CASE("damaged checkpoints are found; auto skips them, an explicit path is an error", "[checkpoint]") {
  QuietLog quiet;
  TempDir dir;
  const auto config = tiny_config({"train.steps=3", "checkpoint.every=1"});
  train::Trainer(config, run_directory(dir / "run")).run();
  REQUIRE(checkpoint::list_checkpoints(dir / "run").size() == 3);

  struct Damage {
    std::string name;
    std::function<void(const fs::path&)> apply;
    std::string expected;
  };
  const std::vector<Damage> damages = {
      {"truncated", [](const fs::path& ck) { fs::resize_file(ck / "model.safetensors", 100); },
       "model.safetensors has 100 bytes"},
      {"flipped byte",
       [](const fs::path& ck) {
         std::fstream f(ck / "optimizer.safetensors", std::ios::in | std::ios::out | std::ios::binary);
         f.seekp(-3, std::ios::end);
         f.put('\x7f');
       },
       "optimizer.safetensors does not match its checksum"},
      {"missing file", [](const fs::path& ck) { fs::remove(ck / "state.json"); }, "state.json is missing"},
      {"missing manifest", [](const fs::path& ck) { fs::remove(ck / "manifest.json"); },
       "manifest.json is missing"},
  };
  for (const auto& damage : damages) {
    CAPTURE(damage.name);
    TempDir copy;
    fs::copy(dir / "run", copy / "run", fs::copy_options::recursive);
    const fs::path newest = copy / "run" / "step-00000003";
    damage.apply(newest);
    const auto status = checkpoint::verify_checkpoint(newest);
    CHECK_FALSE(status.ok());
    CHECK_THAT(status.problem, has_substr(damage.expected));

    train::Trainer resumed(config, run_directory(copy / "run"));
    REQUIRE(resumed.resume("auto"));
    CHECK(resumed.state().step == 2);
    train::Trainer explicit_path(config, run_directory(copy / "run"));
    CHECK_THROWS_WITH(explicit_path.resume(newest.string()), has_substr("step-00000003: damaged checkpoint"));
  }
  const auto verify = run_dla("checkpoint verify '" + (dir / "run").string() + "'");
  CHECK(verify.status == 0);
  CHECK_THAT(verify.output, has_substr("step-00000003"));
}

TEST_CASE("retention keeps the newest keep_last and every keep_every-th", "[checkpoint]") {
  QuietLog quiet;
  TempDir dir;
  train::Trainer(tiny_config({"train.steps=7", "checkpoint.every=1", "checkpoint.keep_last=2",
                              "checkpoint.keep_every=3"}),
                 run_directory(dir / "run"))
      .run();
  std::vector<int64_t> steps;
  for (const auto& status : checkpoint::list_checkpoints(dir / "run")) {
    CHECK(status.ok());
    steps.push_back(status.step);
  }
  CHECK(steps == std::vector<int64_t>{3, 6, 7});
}

TEST_CASE("resume refuses another architecture and reports changed training keys", "[checkpoint]") {
  QuietLog quiet;
  TempDir dir;
  train::Trainer(tiny_config({"train.steps=2"}), run_directory(dir / "run")).run();
  train::Trainer other(tiny_config({"model.num_layers=2"}), run_directory(dir / "run"));
  CHECK_THROWS_WITH(other.resume("auto"), has_substr("the checkpoint's model differs from the config's") &&
                                              has_substr("model.num_layers: 1 in the checkpoint, 2 now"));
  train::Trainer longer(tiny_config({"train.steps=4", "optim.lr=5e-4"}), run_directory(dir / "run"));
  CHECK(longer.resume("auto"));
  CHECK(longer.state().step == 2);
}

TEST_CASE("a full disk during a save fails clearly and keeps the earlier checkpoint", "[checkpoint]") {
  QuietLog quiet;
  TempDir dir;
  const auto config = tiny_config({"train.steps=1"});
  train::Trainer trainer(config, run_directory(dir / "run"));
  trainer.run();
  ::setenv("DLA_FAULT_WRITE_LIMIT", "2000", 1);
  auto& model = *trainer.model();
  torch::optim::AdamW optimizer(model.parameters());
  const auto attempt = [&] {
    checkpoint::save_train_checkpoint(
        dir / "run", config, model, optimizer,
        {.step = 2, .tokens_seen = 0, .samples_seen = 0, .world_size = 1, .tokenizer_fingerprint = ""});
  };
  CHECK_THROWS_WITH(attempt(), has_substr("No space left on device"));
  ::unsetenv("DLA_FAULT_WRITE_LIMIT");
  for (const auto& entry : fs::directory_iterator(dir / "run"))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
  CHECK_FALSE(fs::exists(dir / "run" / "step-00000002"));
  CHECK(read_text(dir / "run" / "latest") == "step-00000001\n");
  CHECK(checkpoint::verify_checkpoint(dir / "run" / "step-00000001").ok());
}

TEST_CASE("a process killed while saving leaves the previous checkpoint, and --resume auto uses it",
          "[checkpoint][cli]") {
  TempDir dir;
  const std::string run = fmt::format("'{}'", (dir / "run").string());
  const std::string common =
      "train --config configs/quickstart.yaml --set train.device=cpu --set train.batch_size=4 "
      "--set train.seq_len=32 --set data.mqar.eval_examples=4 --set checkpoint.every=1 --run-dir " +
      run;
  const std::string killed = fmt::format(
      "cd '{}' && DLA_FAULT_CHECKPOINT=kill-after-model:2 '{}' {} "
      "--set train.steps=3 > /dev/null 2>&1",
      DLA_SOURCE_DIR, DLA_BINARY, common);
  // SIGKILL: the shell reports the child's death as a non-zero status.
  CHECK(std::system(killed.c_str()) != 0);
  // The run died while writing step 2: step 1 is intact and latest still names it.
  CHECK(checkpoint::verify_checkpoint(dir / "run" / "step-00000001").ok());
  CHECK_FALSE(fs::exists(dir / "run" / "step-00000002"));
  CHECK(read_text(dir / "run" / "latest") == "step-00000001\n");
  const auto resumed = run_dla(common + " --set train.steps=3 --resume auto", DLA_SOURCE_DIR);
  INFO(resumed.output);
  REQUIRE(resumed.status == 0);
  CHECK_THAT(resumed.output, has_substr("resumed from"));
  CHECK(checkpoint::verify_checkpoint(dir / "run" / "step-00000003").ok());
}

TEST_CASE("SIGTERM finishes the step, saves and exits 0", "[checkpoint][cli]") {
  TempDir dir;
  const fs::path run = dir / "run";
  const std::string script = fmt::format(
      "cd '{}' && {} train --config configs/quickstart.yaml --set train.device=cpu --set train.steps=100000 "
      "--set train.batch_size=4 --set train.seq_len=32 --set train.log_every=1 --run-dir '{}' > '{}' 2>&1 & "
      "pid=$!; for i in $(seq 600); do grep -q 'step 3/' '{}' 2>/dev/null && break; sleep 0.1; done; "
      "kill -TERM $pid; wait $pid; echo $? > '{}'",
      DLA_SOURCE_DIR, DLA_BINARY, run.string(), (dir / "out.txt").string(), (dir / "out.txt").string(),
      (dir / "status.txt").string());
  REQUIRE(std::system(script.c_str()) == 0);
  INFO(read_text(dir / "out.txt"));
  CHECK(read_text(dir / "status.txt") == "0\n");
  CHECK_THAT(read_text(dir / "out.txt"), has_substr("stop requested"));
  const auto checkpoints = checkpoint::list_checkpoints(run);
  REQUIRE(checkpoints.size() == 1);
  CHECK(checkpoints[0].ok());
  CHECK(checkpoints[0].step >= 3);
}

TEST_CASE("export then import gives back the weights", "[checkpoint][cli]") {
  QuietLog quiet;
  TempDir dir;
  train::Trainer trainer(tiny_config({"train.steps=1"}), run_directory(dir / "run"));
  trainer.run();
  const auto exported = run_dla("export --checkpoint '" + (dir / "run" / "step-00000001").string() +
                                "' --out '" + (dir / "fla").string() + "'");
  INFO(exported.output);
  REQUIRE(exported.status == 0);
  auto imported = checkpoint::import_fla_checkpoint(dir / "fla");
  check_same_weights(*trainer.model(), *imported.model);
  const auto list = run_dla("checkpoint list '" + (dir / "run").string() + "'");
  CHECK(list.status == 0);
  CHECK_THAT(list.output, has_substr("step-00000001") && has_substr("ok"));
}

}  // namespace dla::test
