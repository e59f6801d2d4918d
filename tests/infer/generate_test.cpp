// Decoding through the recurrent caches: prefill then decode equals the parallel forward for every mixer and
// memory policy, greedy generation is the argmax of the parallel forward, the caches of single and dla stay
// constant in size, and `dla generate` prints the same tokens and reports bad input.
// Shapes: B batch, T tokens, V vocabulary.
#include "dla/infer/generate.h"

#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "checkpoint/checkpoint_testing.h"
#include "dla/checkpoint/model_checkpoint.h"
#include "ops/op_testing.h"

namespace dla::test {
namespace {

struct ModelCase {
  model::MixerKind mixer;
  std::string policy;
  std::string name() const {
    return fmt::format("{}/{}", mixer == model::MixerKind::gdn ? "gdn" : "mamba2", policy);
  }
};

const ModelCase kModelCases[] = {
    {model::MixerKind::gdn, "single"},     {model::MixerKind::gdn, "fenwick"},
    {model::MixerKind::gdn, "dla"},        {model::MixerKind::mamba2, "single"},
    {model::MixerKind::mamba2, "fenwick"}, {model::MixerKind::mamba2, "dla"},
};

/// A small model of the case, its parameters perturbed so that λ and the scores differ by level and token.
/// The dla cache is small (3 segments) and its threshold low enough that boundaries come and go.
config::ResolvedConfig case_config(const ModelCase& c) {
  return small_model_config(
      c.mixer, {"model.memory.policy=" + c.policy, "model.memory.capacity=3", "model.memory.threshold=0.3",
                "model.memory.max_length=256", "model.chunk_size=16"});
}

model::CausalLM case_model(const ModelCase& c, uint64_t seed) {
  model::CausalLM lm(case_config(c).config.model);
  perturb_parameters(*lm, seed);
  lm->eval();
  return lm;
}

at::Tensor random_ids(int64_t tokens, uint64_t seed) {
  at::manual_seed(seed);
  return at::randint(64, {1, tokens}, at::kLong);
}

}  // namespace

TEST_CASE("prefill then decode gives the logits of the parallel forward", "[infer]") {
  const ModelCase c = kModelCases[GENERATE(0, 1, 2, 3, 4, 5)];
  const std::string name = c.name();
  CAPTURE(name);
  model::CausalLM lm = case_model(c, 5);
  at::NoGradGuard no_grad;
  const int64_t tokens = 45, prefill = 19;
  const at::Tensor ids = random_ids(tokens, 6);
  const at::Tensor full = lm->forward(ids);

  model::GenerationCache cache;
  std::vector<at::Tensor> pieces = {lm->forward(ids.narrow(1, 0, prefill), &cache)};
  // One step at a time, then a block of several tokens through the recurrent form.
  for (int64_t t = prefill; t < 30; ++t)
    pieces.push_back(lm->forward(ids.narrow(1, t, 1), &cache));
  pieces.push_back(lm->forward(ids.narrow(1, 30, tokens - 30), &cache));
  CHECK(cache.position == tokens);
  expect_close("logits", full, at::cat(pieces, 1), 1e-5);
}

TEST_CASE("greedy generation is the argmax of the parallel forward, with constant caches", "[infer]") {
  const ModelCase c = kModelCases[GENERATE(0, 1, 2, 3, 4, 5)];
  const std::string name = c.name();
  CAPTURE(name);
  model::CausalLM lm = case_model(c, 8);
  const at::Tensor prompt = random_ids(9, 10);
  const std::vector<int64_t> prompt_ids(prompt.data_ptr<int64_t>(), prompt.data_ptr<int64_t>() + 9);
  const infer::Generation long_run = infer::generate(*lm, prompt_ids, 40, {});
  REQUIRE(long_run.tokens.size() == 40);

  at::NoGradGuard no_grad;
  const at::Tensor all = at::cat({prompt, at::tensor(long_run.tokens, at::kLong).unsqueeze(0)}, 1);
  const at::Tensor predicted = lm->forward(all).argmax(-1).narrow(1, 8, 40);
  CHECK(at::equal(predicted, all.narrow(1, 9, 40)));

  // The caches of single and dla do not grow with the length (fenwick holds its levels up to max_length).
  const infer::Generation short_run = infer::generate(*lm, prompt_ids, 3, {});
  CHECK(short_run.cache_bytes > 0);
  CHECK(short_run.cache_bytes == long_run.cache_bytes);
  CHECK(std::equal(short_run.tokens.begin(), short_run.tokens.end(), long_run.tokens.begin()));
}

TEST_CASE("sampling is seeded and stays within the top k", "[infer]") {
  model::CausalLM lm = case_model(kModelCases[2], 3);
  const std::vector<int64_t> prompt = {1, 2, 3};
  const infer::SamplingOptions sampling{.temperature = 1.5, .top_k = 1, .seed = 4};
  // top_k = 1 is greedy whatever the temperature.
  CHECK(infer::generate(*lm, prompt, 12, sampling).tokens == infer::generate(*lm, prompt, 12, {}).tokens);
  const infer::SamplingOptions wide{.temperature = 1.5, .top_k = 0, .seed = 4};
  CHECK(infer::generate(*lm, prompt, 12, wide).tokens == infer::generate(*lm, prompt, 12, wide).tokens);
}

TEST_CASE("dla generate prints the generated tokens and the cache size", "[infer][cli]") {
  TempDir dir;
  const ModelCase c = kModelCases[5];
  model::CausalLM lm = case_model(c, 12);
  checkpoint::save_model_checkpoint(dir / "ckpt", case_config(c), *lm);
  const auto result =
      run_dla_stdout("generate --checkpoint ckpt --ids '4 8 15 16 23 42' --max-new 7", dir.path());
  INFO(result.output);
  REQUIRE(result.status == 0);
  const auto json = nlohmann::json::parse(result.output);
  const infer::Generation expected = infer::generate(*lm, {4, 8, 15, 16, 23, 42}, 7, {});
  CHECK(json.at("tokens").get<std::vector<int64_t>>() == expected.tokens);
  CHECK(json.at("cache_bytes").get<int64_t>() == expected.cache_bytes);
  CHECK(json.at("memory_policy") == "dla");
  CHECK(json.at("prompt_tokens") == 6);

  const auto bad_id = run_dla("generate --checkpoint ckpt --ids '4 x 15'", dir.path());
  CHECK(bad_id.status == 1);
  CHECK_THAT(bad_id.output, has_substr("--ids: token 'x' at position 1 is not an integer token id"));
  const auto outside = run_dla("generate --checkpoint ckpt --ids '4 64'", dir.path());
  CHECK(outside.status == 1);
  CHECK_THAT(outside.output, has_substr("token 64 at position 1 is outside the model's vocabulary [0, 64)"));
  const auto empty = run_dla("generate --checkpoint ckpt --ids ' '", dir.path());
  CHECK(empty.status == 1);
  CHECK_THAT(empty.output, has_substr("0 tokens; at least 1 needed"));
}

}  // namespace dla::test
