// `dla score`: one JSON object on stdout; bad token ids name the token and its position; usage errors.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "checkpoint/checkpoint_testing.h"
#include "dla/checkpoint/model_checkpoint.h"

namespace dla::test {
namespace {

// A small GDN checkpoint (vocab 64) in `dir`/ckpt.
model::CausalLM write_checkpoint(const TempDir& dir) {
  const auto config = small_model_config(model::MixerKind::gdn);
  model::CausalLM model(config.config.model);
  perturb_parameters(*model, 9);
  checkpoint::save_model_checkpoint(dir / "ckpt", config, *model);
  return model;
}

}  // namespace

TEST_CASE("dla score prints one JSON object with the mean next-token loss", "[cli]") {
  TempDir dir;
  auto model = write_checkpoint(dir);
  const auto result = run_dla_stdout("score --checkpoint ckpt --ids '3 17 42 0 63 5 5 9'", dir.path());
  INFO(result.output);
  REQUIRE(result.status == 0);
  // Standard output is exactly one line of JSON.
  REQUIRE(std::count(result.output.begin(), result.output.end(), '\n') == 1);
  const auto score = nlohmann::json::parse(result.output);
  const double expected =
      score_in_process(*model, at::tensor({3, 17, 42, 0, 63, 5, 5, 9}, at::kLong).unsqueeze(0));
  CHECK(score.at("tokens") == 8);
  CHECK(score.at("predicted_tokens") == 7);
  CHECK(std::abs(score.at("mean_loss").get<double>() - expected) <= 1e-6);
  CHECK(std::abs(score.at("perplexity").get<double>() - std::exp(expected)) <= 1e-5);

  // Commas separate too; a file holds one sequence per line and blank lines are skipped.
  write_text(dir / "ids.txt", "3, 17, 42, 0, 63, 5, 5, 9\n\n1 2 3\n");
  const auto file = run_dla_stdout("score --checkpoint ckpt --ids-file ids.txt", dir.path());
  REQUIRE(file.status == 0);
  const auto both = nlohmann::json::parse(file.output);
  CHECK(both.at("sequences") == 2);
  CHECK(both.at("tokens") == 11);
  CHECK(both.at("predicted_tokens") == 9);
  const double second = score_in_process(*model, at::tensor({1, 2, 3}, at::kLong).unsqueeze(0));
  CHECK(std::abs(both.at("mean_loss").get<double>() - (7 * expected + 2 * second) / 9) <= 1e-6);
}

TEST_CASE("dla score rejects bad token ids, naming the token and its position", "[cli]") {
  TempDir dir;
  write_checkpoint(dir);
  struct Case {
    const char* ids;
    const char* message;
  };
  for (const Case& c : {Case{"1 2 x3 4", "token 'x3' at position 2 is not an integer"},
                        Case{"1 2.5", "token '2.5' at position 1 is not an integer"},
                        Case{"1 2 3 -4", "token -4 at position 3 is negative"},
                        Case{"1 64 3", "token 64 at position 1 is outside the model's vocabulary [0, 64)"},
                        Case{"7", "1 token; at least 2 needed"}, Case{"  ", "0 tokens; at least 2 needed"}}) {
    CAPTURE(c.ids);
    const auto result = run_dla(std::string("score --checkpoint ckpt --ids '") + c.ids + "'", dir.path());
    CHECK(result.status == 1);
    CHECK_THAT(result.output, has_substr("--ids") && has_substr(c.message));
  }
  write_text(dir / "ids.txt", "1 2 3\n4 5 99 6\n");
  const auto file = run_dla("score --checkpoint ckpt --ids-file ids.txt", dir.path());
  CHECK(file.status == 1);
  CHECK_THAT(file.output, has_substr("ids.txt:2: token 99 at position 2 is outside"));

  const auto missing = run_dla("score --checkpoint nowhere --ids '1 2'", dir.path());
  CHECK(missing.status == 1);
  CHECK_THAT(missing.output, has_substr("nowhere") && has_substr("does not exist"));
}

TEST_CASE("dla score needs exactly one of --ids and --ids-file", "[cli]") {
  TempDir dir;
  write_checkpoint(dir);
  write_text(dir / "ids.txt", "1 2 3\n");
  for (const char* args :
       {"score --checkpoint ckpt", "score --checkpoint ckpt --ids '1 2' --ids-file ids.txt"}) {
    CAPTURE(args);
    const auto result = run_dla(args, dir.path());
    CHECK(result.status == 2);
    CHECK_THAT(result.output, has_substr("--ids") && has_substr("Usage:"));
  }
}

}  // namespace dla::test
