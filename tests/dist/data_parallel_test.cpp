// Data-parallel training as users run it: `dla launch` starting several `dla train` processes that talk over
// Gloo. Results are compared with a single process on the same global batch.
#include <chrono>
#include <regex>
#include <set>

#include "catch.h"
#include "dla/data/prepare.h"
#include "dla/dist/launcher.h"
#include "dla/io/safetensors.h"
#include "test_util.h"
#include "train/train_testing.h"

namespace dla::dist {
namespace {

namespace fs = std::filesystem;
using test::has_substr;
using test::run_dla;

// A tiny run config file; the global batch of 6 splits over 1, 2 and 3 ranks.
fs::path write_config(const fs::path& dir, const std::vector<std::string>& overrides) {
  std::vector<std::string> all = {"train.batch_size=6", "train.steps=6", "train.log_every=1",
                                  "optim.lr=3e-3"};
  all.insert(all.end(), overrides.begin(), overrides.end());
  const fs::path file = dir / "config.yaml";
  test::write_text(file, test::tiny_train_config(all).to_yaml());
  return file;
}

std::string launch_train(int ranks, const fs::path& config, const fs::path& run,
                         const std::string& extra = "") {
  return fmt::format("launch --nproc-per-node {} -- train --config '{}' --run-dir '{}' {}", ranks,
                     config.string(), run.string(), extra);
}

std::vector<double> losses(const fs::path& run) {
  std::vector<double> out;
  for (const auto& row : test::read_jsonl(run / "metrics.jsonl"))
    if (row.contains("loss")) out.push_back(row.at("loss"));
  return out;
}

void check_same_losses(const std::vector<double>& expected, const std::vector<double>& actual) {
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(i, expected[i], actual[i]);
    CHECK(std::abs(expected[i] - actual[i]) <= 1e-5 * std::max(1.0, std::abs(expected[i])));
  }
}

void check_same_weights(const fs::path& expected_run, const fs::path& actual_run) {
  const io::SafetensorsReader expected(expected_run / "model" / "model.safetensors");
  const io::SafetensorsReader actual(actual_run / "model" / "model.safetensors");
  REQUIRE(actual.names() == expected.names());
  for (const auto& name : expected.names()) {
    CAPTURE(name);
    CHECK(at::allclose(actual.tensor(name), expected.tensor(name), 1e-4, 1e-5));
  }
}

// The weight digests the ranks logged (at debug level) when they compared their replicas at `step`.
std::vector<std::string> final_digests(const std::string& output, int64_t step) {
  const std::regex line(
      fmt::format("weights identical on all ranks at step {} \\(digest ([0-9a-f]+)\\)", step));
  std::vector<std::string> digests;
  for (std::sregex_iterator it(output.begin(), output.end(), line), end; it != end; ++it)
    digests.push_back((*it)[1]);
  return digests;
}

// Sets an environment variable for the commands the test runs, restoring it at scope exit.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { ::setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

// Trains `config` in one process (no launcher) into `run`.
void train_one_process(const fs::path& config, const fs::path& run) {
  const auto single =
      run_dla(fmt::format("train --config '{}' --run-dir '{}'", config.string(), run.string()));
  INFO(single.output);
  REQUIRE(single.status == 0);
}

// Trains `config` on `ranks` launched workers into `run` and CHECKs its losses and final weights against
// those of `expected_run`.
void expect_launch_matches(int ranks, const fs::path& config, const fs::path& expected_run,
                           const fs::path& run, const std::string& extra = "") {
  const auto launched = run_dla(launch_train(ranks, config, run, extra));
  INFO(launched.output);
  REQUIRE(launched.status == 0);
  check_same_losses(losses(expected_run), losses(run));
  check_same_weights(expected_run, run);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TEST_CASE("2 and 3 ranks, and 2 nodes of 1, train like one process on the same global batch", "[dist][cli]") {
  test::TempDir dir;
  const fs::path config = write_config(dir.path(), {});
  train_one_process(config, dir / "one");
  const auto expected = losses(dir / "one");
  REQUIRE(expected.size() == 6);

  for (const int ranks : {2, 3}) {
    CAPTURE(ranks);
    const fs::path run = dir / fmt::format("ranks{}", ranks);
    const auto result = run_dla(launch_train(ranks, config, run, "--log-level debug"));
    INFO(result.output);
    REQUIRE(result.status == 0);
    check_same_losses(expected, losses(run));
    check_same_weights(dir / "one", run);
    // Every rank ends with the same weights, bit for bit.
    const auto digests = final_digests(result.output, 6);
    CHECK(digests.size() == static_cast<size_t>(ranks));
    CHECK(std::set<std::string>(digests.begin(), digests.end()).size() == 1);
    // Rank 0 alone writes the run's files, and every line of a worker names its rank.
    CHECK_THAT(result.output, has_substr("[rank 1]"));
    const std::string log = test::read_text(run / "log.txt");
    CHECK_THAT(log, has_substr("[rank 0]"));
    CHECK(log.find("[rank 1]") == std::string::npos);
  }

  // Two launchers acting as two nodes of one process each, meeting at one rendezvous port.
  const fs::path run = dir / "nodes";
  const int port = free_port();
  const auto node = [&](int node_rank) {
    return fmt::format(
        "'{}' launch --nnodes 2 --node-rank {} --nproc-per-node 1 --master-addr 127.0.0.1 "
        "--master-port {} -- train --config '{}' --run-dir '{}'",
        DLA_BINARY, node_rank, port, config.string(), run.string());
  };
  const std::string script =
      fmt::format("{} > '{}' 2>&1 & {} > '{}' 2>&1; a=$?; wait $!; b=$?; test $a -eq 0 -a $b -eq 0", node(1),
                  (dir / "node1.txt").string(), node(0), (dir / "node0.txt").string());
  const int status = std::system(script.c_str());
  INFO(test::read_text(dir / "node0.txt") + test::read_text(dir / "node1.txt"));
  REQUIRE(status == 0);
  CHECK_THAT(test::read_text(dir / "node0.txt"), has_substr("data parallel: 2 ranks over gloo"));
  check_same_losses(expected, losses(run));
}

TEST_CASE("with gradient accumulation, 3 ranks train like one process", "[dist][cli]") {
  test::TempDir dir;
  const fs::path config = write_config(dir.path(), {"train.batch_size=12", "train.grad_accum_steps=2"});
  train_one_process(config, dir / "one");
  expect_launch_matches(3, config, dir / "one", dir / "three");
}

TEST_CASE("with activation checkpointing, 2 ranks train like one process without it", "[dist][cli]") {
  test::TempDir dir;
  const fs::path config = write_config(dir.path(), {});
  train_one_process(config, dir / "one");
  // The recomputing backward fires the gradient reducer's hooks from a nested backward pass.
  expect_launch_matches(2, config, dir / "one", dir / "two", "--set train.activation_checkpointing=true");
}

TEST_CASE("a worker killed mid-run ends the job with an error naming its rank", "[dist][cli]") {
  test::TempDir dir;
  const fs::path config = write_config(dir.path(), {"train.steps=1000", "dist.timeout_s=20"});
  const ScopedEnv fault("DLA_FAULT_RANK", "kill:1:3");
  const auto start = std::chrono::steady_clock::now();
  const auto result = run_dla(launch_train(3, config, dir / "run", "") + " ");
  INFO(result.output);
  CHECK(seconds_since(start) < 20);
  CHECK(result.status == 128 + 9);
  CHECK_THAT(result.output, has_substr("rank 1 (pid"));
  CHECK_THAT(result.output, has_substr("the job failed: rank 1 was killed by signal 9"));
}

TEST_CASE("a hung worker makes the others time out; the error names the rank that is behind", "[dist][cli]") {
  test::TempDir dir;
  const fs::path config = write_config(dir.path(), {"train.steps=1000", "dist.timeout_s=3"});
  const ScopedEnv fault("DLA_FAULT_RANK", "hang:1:3");
  const auto start = std::chrono::steady_clock::now();
  const auto result = run_dla(
      fmt::format("launch --nproc-per-node 2 --grace-period-s 1 -- train --config '{}' --run-dir '{}'",
                  config.string(), (dir / "run").string()));
  INFO(result.output);
  // 3 s of collective timeout, then 1 s of grace before the hung rank is killed.
  CHECK(seconds_since(start) < 30);
  CHECK(result.status == 1);
  CHECK_THAT(result.output, has_substr("Ranks behind step 3: 1 (step 2)"));
  CHECK_THAT(result.output, has_substr("rank 1 still running"));
}

TEST_CASE("a run of 2 ranks resumes as 1 and as 3 ranks and continues the data exactly",
          "[dist][cli][checkpoint]") {
  test::TempDir dir;
  std::string text;
  for (int i = 0; i < 30; ++i)
    text += fmt::format("document line {} about cats, dogs and {} mats. ", i, i * 7);
  fs::create_directories(dir / "docs");
  for (int i = 0; i < 12; ++i)
    test::write_text(dir / "docs" / fmt::format("d{}.txt", i), text + std::to_string(i));
  data::PrepareOptions prepare;
  prepare.inputs = {(dir / "docs").string()};
  prepare.out = (dir / "data").string();
  prepare.val_fraction = 0.1;
  data::prepare_dataset(prepare);
  const fs::path config =
      write_config(dir.path(), {"model.vocab_size=258", "data.source=tokens", "data.path=" + prepare.out,
                                "data.tokenizer=byte", "data.val_batches=1", "checkpoint.every=3"});

  const auto reference = run_dla(launch_train(2, config, dir / "reference"));
  INFO(reference.output);
  REQUIRE(reference.status == 0);
  const auto expected = losses(dir / "reference");
  REQUIRE(expected.size() == 6);

  const auto stopped = run_dla(launch_train(2, config, dir / "as1", "--stop-at 3"));
  INFO(stopped.output);
  REQUIRE(stopped.status == 0);
  fs::copy(dir / "as1", dir / "as3", fs::copy_options::recursive);

  const auto as1 = run_dla(fmt::format("train --config '{}' --run-dir '{}' --resume auto", config.string(),
                                       (dir / "as1").string()));
  INFO(as1.output);
  REQUIRE(as1.status == 0);
  CHECK_THAT(as1.output, has_substr("saved with 2 ranks, now 1"));
  const auto as3 = run_dla(launch_train(3, config, dir / "as3", "--resume auto"));
  INFO(as3.output);
  REQUIRE(as3.status == 0);
  CHECK_THAT(as3.output, has_substr("saved with 2 ranks, now 3"));
  for (const auto& run : {dir / "as1", dir / "as3"}) {
    CAPTURE(run.string());
    // metrics.jsonl holds the first three steps from before the stop and the last three after the resume.
    check_same_losses(expected, losses(run));
    const auto state = nlohmann::json::parse(test::read_text(run / "step-00000006" / "state.json"));
    CHECK(state.at("samples_seen") == 36);
  }
}

TEST_CASE("launch refuses bad arguments and layouts with a clear message", "[dist][cli]") {
  test::TempDir dir;
  const auto no_command = run_dla("launch --nproc-per-node 2");
  CHECK(no_command.status != 0);
  CHECK_THAT(no_command.output, has_substr("command"));
  const auto bad_node = run_dla("launch --nnodes 2 --node-rank 2 -- version");
  CHECK(bad_node.status == 1);
  CHECK_THAT(bad_node.output, has_substr("--node-rank 2 must be in [0, 2)"));
  // A global batch of 6 cannot be split over 4 ranks: each rank says so, and the job fails.
  const fs::path config = write_config(dir.path(), {});
  const auto uneven = run_dla(launch_train(4, config, dir / "run"));
  CHECK(uneven.status == 1);
  CHECK_THAT(uneven.output,
             has_substr("train.batch_size = 6 must be a multiple of train.grad_accum_steps × ranks = 1 × 4"));
  // A worker whose command fails makes launch fail with its status.
  const auto failing = run_dla("launch --nproc-per-node 2 -- train --config /nonexistent.yaml");
  CHECK(failing.status != 0);
}

}  // namespace dla::dist
