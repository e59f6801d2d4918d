// The training loop on a tiny config: files it leaves, bitwise-repeatable losses, divergence, masked_loss.
// Shapes: B batch, T tokens, V vocabulary.
#include "dla/train/trainer.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <cmath>
#include <fstream>

#include "catch.h"
#include "dla/checkpoint/model_checkpoint.h"
#include "dla/data/prepare.h"
#include "dla/train/lr_schedule.h"
#include "test_util.h"
#include "train/train_testing.h"

namespace dla::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using test::column;
using test::QuietLog;
using test::read_jsonl;

config::ResolvedConfig tiny_config(const std::vector<std::string>& overrides = {}) {
  return test::tiny_train_config(overrides);
}

run::RunDirectory run_directory(const fs::path& root) {
  return test::test_run_directory(root);
}

}  // namespace

TEST_CASE("masked_loss is the mean cross-entropy over positions whose label is not -100", "[train]") {
  // B=2, T=2, V=3; two of the four positions are ignored.
  const at::Tensor logits_BTV =
      at::tensor({0.0, 0.0, 0.0, /**/ 5.0, -1.0, 2.0, /**/ 9.0, 9.0, 9.0, /**/ 1.0, 2.0, 3.0}, at::kDouble)
          .reshape({2, 2, 3});
  const at::Tensor labels_BT = at::tensor({1, -100, -100, 2}, at::kLong).reshape({2, 2});
  // Position (0,0): uniform over 3, loss log 3. Position (1,1): logsumexp(1,2,3) − 3.
  const double expected =
      (std::log(3.0) + (std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3.0)) / 2;
  const double loss = masked_loss(logits_BTV, labels_BT).item<double>();
  CAPTURE(loss, expected);
  CHECK(std::abs(loss - expected) <= 1e-6);
  // No ignored positions: the plain mean over all four.
  const at::Tensor all_BT = at::tensor({1, 0, 2, 2}, at::kLong).reshape({2, 2});
  const double plain = (std::log(3.0) + (std::log(std::exp(5.0) + std::exp(-1.0) + std::exp(2.0)) - 5.0) +
                        std::log(3.0) + (std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3.0)) /
                       4;
  CHECK(std::abs(masked_loss(logits_BTV, all_BT).item<double>() - plain) <= 1e-6);
}

TEST_CASE("Trainer writes metrics.jsonl, loss.svg and eval.json", "[train]") {
  QuietLog quiet;
  test::TempDir dir;
  const auto config = tiny_config();
  Trainer trainer(config, run_directory(dir / "run"));
  const json eval = trainer.run();

  // Rows at every log_every steps and at the last step: 2, 4, 5.
  const auto rows = read_jsonl(dir / "run" / "metrics.jsonl");
  REQUIRE(rows.size() == 3);
  CHECK(column(rows, "step") == std::vector<double>{2, 4, 5});
  for (const auto& row : rows) {
    CAPTURE(row.dump());
    for (const char* key : {"step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm"})
      CHECK(row.contains(key));
    const int64_t step = row.at("step");
    CHECK(row.at("tokens").get<int64_t>() == step * 4 * 16);
    CHECK(row.at("lr").get<double>() == lr_at(config.config.optim, step, 5));
    CHECK(std::isfinite(row.at("loss").get<double>()));
    CHECK(row.at("loss").get<double>() > 0);
    CHECK(row.at("grad_norm").get<double>() > 0);
    CHECK(row.at("tokens_per_s").get<double>() > 0);
  }
  CHECK_THAT(test::read_text(dir / "run" / "loss.svg"), test::has_substr("<svg"));
  const json saved = json::parse(test::read_text(dir / "run" / "eval.json"));
  CHECK(saved == eval);
  CHECK(saved.at("step") == 5);
  CHECK(saved.at("mqar_accuracy").get<double>() >= 0);
  CHECK(saved.at("mqar_accuracy").get<double>() <= 1);
  CHECK(saved.at("queries") == 8 * 2);  // eval_examples × num_kv_pairs

  // The final weights are a model checkpoint, equal to the trainer's model.
  const auto loaded = checkpoint::load_model_checkpoint(dir / "run" / "model");
  const auto trained = trainer.model()->named_parameters();
  for (const auto& item : loaded.model->named_parameters()) {
    CAPTURE(item.key());
    CHECK(at::equal(item.value(), trained[item.key()].detach().cpu()));
  }
}

TEST_CASE("Trainer runs with the same seed give identical losses and weights", "[train]") {
  QuietLog quiet;
  test::TempDir dir;
  const auto config = tiny_config({"train.steps=4", "train.log_every=1", "train.grad_accum_steps=2"});
  Trainer first(config, run_directory(dir / "a"));
  first.run();
  Trainer second(config, run_directory(dir / "b"));
  second.run();
  const auto a = read_jsonl(dir / "a" / "metrics.jsonl");
  const auto b = read_jsonl(dir / "b" / "metrics.jsonl");
  REQUIRE(a.size() == 4);
  CHECK(column(a, "loss") == column(b, "loss"));
  CHECK(column(a, "grad_norm") == column(b, "grad_norm"));
  const auto b_params = second.model()->named_parameters();
  for (const auto& item : first.model()->named_parameters()) {
    CAPTURE(item.key());
    CHECK(at::equal(item.value(), b_params[item.key()]));
  }

  // Another seed draws other weights and data.
  Trainer other(
      tiny_config({"train.steps=4", "train.log_every=1", "train.grad_accum_steps=2", "run.seed=99"}),
      run_directory(dir / "c"));
  other.run();
  CHECK(column(read_jsonl(dir / "c" / "metrics.jsonl"), "loss") != column(a, "loss"));
}

TEST_CASE("train.cuda_graphs is refused on the CPU and on the GPU trains as eager steps do",
          "[train][cuda]") {
  QuietLog quiet;
  test::TempDir dir;
  CHECK_THROWS_WITH(Trainer(tiny_config({"train.cuda_graphs=true"}), run_directory(dir / "cpu")),
                    test::has_substr("train.cuda_graphs needs a CUDA device"));
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: training with CUDA graphs is not exercised on this machine");
    return;
  }
  // Three eager steps, the capture, then replays: the same kernels as eager training, so the same losses up
  // to the order of reductions.
  const std::vector<std::string> gpu = {"train.device=cuda", "train.steps=8", "train.log_every=1"};
  std::vector<std::string> graphed = gpu;
  graphed.push_back("train.cuda_graphs=true");
  Trainer(tiny_config(gpu), run_directory(dir / "eager")).run();
  Trainer(tiny_config(graphed), run_directory(dir / "graphed")).run();
  const auto eager_rows = read_jsonl(dir / "eager" / "metrics.jsonl");
  const auto graphed_rows = read_jsonl(dir / "graphed" / "metrics.jsonl");
  REQUIRE(eager_rows.size() == 8);
  REQUIRE(graphed_rows.size() == 8);
  for (const char* key : {"loss", "grad_norm"}) {
    const std::vector<double> a = column(eager_rows, key), b = column(graphed_rows, key);
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(key, i, a[i], b[i]);
      CHECK(std::abs(a[i] - b[i]) <= 1e-4 * std::abs(a[i]));
    }
  }
}

TEST_CASE("Trainer stops with a UserError when the loss is not finite", "[train]") {
  QuietLog quiet;
  test::TempDir dir;
  // One step at lr 1e30 without clipping sends the weights to ±1e30; the next loss is inf or NaN.
  Trainer trainer(tiny_config({"optim.lr=1e30", "optim.grad_clip=0", "optim.warmup_steps=0"}),
                  run_directory(dir / "run"));
  CHECK_THROWS_AS(trainer.run(), UserError);
  Trainer again(tiny_config({"optim.lr=1e30", "optim.grad_clip=0", "optim.warmup_steps=0"}),
                run_directory(dir / "again"));
  CHECK_THROWS_WITH(again.run(), test::has_substr("training diverged") && test::has_substr("optim.lr"));
}

}  // namespace dla::train

namespace dla::train {

TEST_CASE("Trainer trains on prepared token data and reports the validation loss", "[train][data]") {
  QuietLog quiet;
  test::TempDir dir;
  std::string text;
  for (int i = 0; i < 40; ++i)
    text += "the cat sat on the mat and the dog sat on the log. ";
  fs::create_directories(dir / "docs");
  for (int i = 0; i < 10; ++i)
    test::write_text(dir / "docs" / fmt::format("d{}.txt", i), text);
  data::PrepareOptions prepare;
  prepare.inputs = {(dir / "docs").string()};
  prepare.out = (dir / "data").string();
  prepare.val_fraction = 0.2;
  data::prepare_dataset(prepare);

  const auto config = tiny_config({"model.vocab_size=258", "data.source=tokens", "data.path=" + prepare.out,
                                   "data.tokenizer=byte", "data.val_batches=2", "train.steps=30",
                                   "train.eval_every=10", "optim.lr=3e-3"});
  Trainer trainer(config, run_directory(dir / "run"));
  const json eval = trainer.run();
  const auto rows = read_jsonl(dir / "run" / "metrics.jsonl");
  std::vector<double> val_losses;
  for (const auto& row : rows) {
    if (row.contains("val_loss")) val_losses.push_back(row.at("val_loss"));
  }
  // Evaluations at steps 10, 20 and the end; on this repetitive text the validation loss falls.
  REQUIRE(val_losses.size() == 3);
  CHECK(val_losses.back() < val_losses.front());
  CHECK(eval.at("val_loss") == val_losses.back());
  CHECK(eval.at("val_tokens") == 2 * 4 * 16);

  // A tokenizer other than the shards' is refused before training.
  const auto wrong = tiny_config({"model.vocab_size=258", "data.source=tokens", "data.path=" + prepare.out,
                                  "data.tokenizer=" + (dir / "missing.model").string()});
  CHECK_THROWS_WITH(Trainer(wrong, run_directory(dir / "run2")), test::has_substr("missing.model"));
}

}  // namespace dla::train

namespace dla::train {

TEST_CASE("eval.suite runs during training every eval.every steps and at the end", "[train][eval]") {
  QuietLog quiet;
  test::TempDir dir;
  test::write_text(
      dir / "suite.yaml",
      "suite: during\ntasks:\n  - {name: keys, type: mqar, generator: {examples: 4, seq_len: 16, "
      "num_kv_pairs: 2}}\n");
  const auto config =
      tiny_config({"train.steps=5", "eval.every=2", "eval.suite=" + (dir / "suite.yaml").string()});
  Trainer trainer(config, run_directory(dir / "run"));
  trainer.run();
  std::vector<int64_t> steps;
  for (const auto& row : read_jsonl(dir / "run" / "metrics.jsonl")) {
    if (!row.contains("eval")) continue;
    steps.push_back(row.at("step"));
    const double accuracy = row.at("eval").at("keys").at("accuracy");
    CHECK(accuracy >= 0.0);
    CHECK(accuracy <= 1.0);
  }
  CHECK(steps == std::vector<int64_t>{2, 4, 5});
  // A suite file that is not there is refused before training starts.
  CHECK_THROWS_WITH(
      Trainer(tiny_config({"eval.suite=" + (dir / "none.yaml").string()}), run_directory(dir / "r2")),
      test::has_substr("none.yaml' does not exist"));
}

}  // namespace dla::train
