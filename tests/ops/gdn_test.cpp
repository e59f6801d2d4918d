// Tests of the gated delta rule ops: both forms against fla's recurrent reference, the chunked form against
// the recurrence over awkward shapes, gradients (chunked against recurrent, recurrent against finite
// differences), bfloat16 inputs and the input checks.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim.
#include "dla/ops/gdn.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <ATen/ops/randn.h>
#include <c10/core/GradMode.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "dla/io/safetensors.h"
#include "ops/op_testing.h"

namespace {

using dla::ops::OpResult;
using dla::test::expect_close;
using dla::test::has_substr;
using dla::test::OpInputs;
using dla::test::OpSizes;

/// chunk_size 0 means the naive recurrence.
OpResult run_gdn(const OpInputs& in, double scale, int64_t chunk_size) {
  if (chunk_size == 0)
    return dla::ops::gdn::naive_recurrent(in.q, in.k, in.v, in.g, in.beta, scale, in.initial_state);
  return dla::ops::gdn::chunk(in.q, in.k, in.v, in.g, in.beta, scale, in.initial_state, chunk_size);
}

/// OpInputs to and from a list in the order of kInputNames, for op_gradients.
const std::vector<std::string> kInputNames = {"q", "k", "v", "g", "beta", "initial_state"};
OpInputs with_tensors(const std::vector<at::Tensor>& x) {
  return {x[0], x[1], x[2], x[3], x[4], x[5]};
}
std::vector<at::Tensor> tensors_of(const OpInputs& in) {
  return {in.q, in.k, in.v, in.g, in.beta, in.initial_state};
}

}  // namespace

TEST_CASE("gdn naive_recurrent and chunk match fla's naive_recurrent_gated_delta_rule",
          "[ops][gdn][fixtures]") {
  const dla::io::SafetensorsReader reader(dla::test::fixture_file("fla/gdn_recurrent.safetensors"));
  std::string names;
  for (const auto& name : reader.names())
    names += name + " ";
  INFO("fixture tensors: " << names);
  const OpInputs in = {reader.tensor("q"), reader.tensor("k"),    reader.tensor("v"),
                       reader.tensor("g"), reader.tensor("beta"), reader.tensor("h0")};
  const auto& metadata = reader.metadata();
  const double scale = metadata.contains("scale") ? nlohmann::json::parse(metadata.at("scale")).get<double>()
                                                  : 1.0 / std::sqrt(static_cast<double>(in.q.size(3)));
  CAPTURE(scale, in.q.sizes(), in.v.sizes());

  const int64_t chunk_size = GENERATE(0, 16, 64);
  CAPTURE(chunk_size);
  const OpResult result = run_gdn(in, scale, chunk_size);
  CHECK(result.out.scalar_type() == at::kFloat);
  CHECK(result.final_state.scalar_type() == at::kFloat);
  CHECK(expect_close("o", reader.tensor("o"), result.out, 1e-5).max_abs_diff <= 1e-4);
  CHECK(expect_close("ht", reader.tensor("ht"), result.final_state, 1e-5).max_abs_diff <= 1e-4);
}

TEST_CASE("gdn chunk matches naive_recurrent", "[ops][gdn]") {
  const int64_t tokens = GENERATE(1, 2, 63, 64, 65, 130);
  const int64_t chunk_size = GENERATE(16, 64);
  const bool with_initial_state = GENERATE(false, true);
  const OpSizes sizes = {.batch = 2, .tokens = tokens, .heads = 3, .key_dim = 16, .value_dim = 24};
  CAPTURE(tokens, chunk_size, with_initial_state);
  const OpInputs in = dla::test::random_inputs(sizes, with_initial_state, at::kFloat, /*seed=*/tokens);

  const OpResult ref = run_gdn(in, 0.25, /*chunk_size=*/0);
  const OpResult got = run_gdn(in, 0.25, chunk_size);
  expect_close("out", ref.out, got.out, 1e-4);
  expect_close("final_state", ref.final_state, got.final_state, 1e-4);
}

TEST_CASE("gdn chunk gradients match naive_recurrent gradients in float64", "[ops][gdn][grad]") {
  const int64_t tokens = GENERATE(1, 5, 37);
  const int64_t chunk_size = GENERATE(4, 16);
  const OpSizes sizes = {.batch = 2, .tokens = tokens, .heads = 2, .key_dim = 4, .value_dim = 6};
  CAPTURE(tokens, chunk_size);
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/true, at::kDouble, /*seed=*/7);
  dla::test::expect_chunk_gradients_match(
      [](const std::vector<at::Tensor>& x, int64_t chunk) { return run_gdn(with_tensors(x), 0.7, chunk); },
      tensors_of(in), kInputNames, chunk_size, 1e-8);
}

TEST_CASE("gdn naive_recurrent gradients match finite differences", "[ops][gdn][grad]") {
  const OpSizes sizes = {.batch = 1, .tokens = 4, .heads = 1, .key_dim = 3, .value_dim = 2};
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/true, at::kDouble, /*seed=*/3);
  const at::Tensor out_weight = dla::test::random_weight(in.v.sizes(), /*seed=*/1);
  const at::Tensor state_weight = dla::test::random_weight(in.initial_state.sizes(), /*seed=*/2);
  const double scale = 0.6;
  const auto loss = [&](const std::vector<at::Tensor>& x) {
    const OpResult r = run_gdn(with_tensors(x), scale, /*chunk_size=*/0);
    return ((r.out * out_weight).sum() + (r.final_state * state_weight).sum()).item<double>();
  };
  const std::vector<at::Tensor> inputs = tensors_of(in);
  const std::vector<at::Tensor> grads = dla::test::op_gradients(
      [&](const std::vector<at::Tensor>& x) { return run_gdn(with_tensors(x), scale, 0); }, inputs,
      out_weight, state_weight);

  const c10::NoGradGuard no_grad;
  const double eps = 1e-6;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const int64_t numel = inputs[i].numel();
    for (const int64_t entry : {int64_t{0}, numel / 2, numel - 1}) {
      std::vector<at::Tensor> plus = inputs;
      std::vector<at::Tensor> minus = inputs;
      plus[i] = inputs[i].clone();
      minus[i] = inputs[i].clone();
      plus[i].view(-1)[entry] += eps;
      minus[i].view(-1)[entry] -= eps;
      const double numeric = (loss(plus) - loss(minus)) / (2 * eps);
      const double analytic = grads[i].view(-1)[entry].item<double>();
      INFO("d" << kInputNames[i] << "[" << entry << "]");
      CAPTURE(numeric, analytic);
      CHECK(std::abs(numeric - analytic) <= 1e-7 * std::max(1.0, std::abs(analytic)));
    }
  }
}

TEST_CASE("gdn chunk takes bfloat16 inputs and stays close to float32", "[ops][gdn]") {
  const OpSizes sizes = {.batch = 2, .tokens = 70, .heads = 2, .key_dim = 16, .value_dim = 24};
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/true, at::kFloat, /*seed=*/11);
  std::vector<at::Tensor> x_bf16;
  for (const auto& x : tensors_of(in))
    x_bf16.push_back(x.to(at::kBFloat16));
  const OpInputs in_bf16 = with_tensors(x_bf16);

  const OpResult ref = run_gdn(in, 0.25, 32);
  const OpResult got = run_gdn(in_bf16, 0.25, 32);
  CHECK(got.out.scalar_type() == at::kBFloat16);
  CHECK(got.final_state.scalar_type() == at::kFloat);
  expect_close("out", ref.out, got.out, 2e-2);
  expect_close("final_state", ref.final_state, got.final_state, 2e-2);
}

TEST_CASE("gdn rejects inputs of mismatched shapes, naming them", "[ops][gdn]") {
  const OpSizes sizes = {.batch = 2, .tokens = 5, .heads = 3, .key_dim = 4, .value_dim = 6};
  OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/true, at::kFloat, /*seed=*/1);
  int64_t chunk_size = 16;
  std::string expected;
  SECTION("k") {
    in.k = at::randn({2, 5, 3, 5});
    expected = "q and k must have the same shape, got [2, 5, 3, 4] and [2, 5, 3, 5]";
  }
  SECTION("v") {
    in.v = at::randn({2, 4, 3, 6});
    expected = "v must be [B, T, H, V] with B, T, H of q, got v [2, 4, 3, 6] and q [2, 5, 3, 4]";
  }
  SECTION("g") {
    in.g = at::randn({2, 5});
    expected = "g must be [B, T, H] with B, T, H of q, got g [2, 5] and q [2, 5, 3, 4]";
  }
  SECTION("beta") {
    in.beta = at::randn({2, 5, 2});
    expected = "beta must be [B, T, H] with B, T, H of q, got beta [2, 5, 2] and q [2, 5, 3, 4]";
  }
  SECTION("initial_state") {
    in.initial_state = at::randn({2, 3, 6, 4});
    expected = "initial_state must be [B, H, K, V] = [2, 3, 4, 6], got [2, 3, 6, 4]";
  }
  SECTION("empty sequence") {
    in = dla::test::random_inputs({.tokens = 0}, /*with_initial_state=*/false, at::kFloat, /*seed=*/1);
    expected = "the sequence must hold at least one token, got q of [2, 0, 2, 16]";
  }
  SECTION("chunk_size") {
    chunk_size = 0;
    expected = "gdn::chunk: chunk_size must be at least 1, got 0";
  }
  const auto run_chunk = [&] {
    dla::ops::gdn::chunk(in.q, in.k, in.v, in.g, in.beta, 1.0, in.initial_state, chunk_size);
  };
  const auto run_naive = [&] {
    dla::ops::gdn::naive_recurrent(in.q, in.k, in.v, in.g, in.beta, 1.0, in.initial_state);
  };
  REQUIRE_THAT(dla::test::c10_error_message(run_chunk), has_substr(expected));
  if (chunk_size >= 1) REQUIRE_THAT(dla::test::c10_error_message(run_naive), has_substr(expected));
}
