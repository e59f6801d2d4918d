// Tests of the SSD ops: the recurrence against the closed quadratic form, the chunked form against the
// recurrence over awkward shapes, gradients of the chunked form against the recurrence, bfloat16 inputs and
// the input checks.
// Shapes: B batch, T tokens, H heads, N state dim, P head dim.
#include "dla/ops/ssd.h"

#include <string>
#include <vector>

#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include "catch.h"
#include "ops/op_testing.h"

namespace {

using dla::ops::OpResult;
using dla::test::expect_close;
using dla::test::has_substr;
using dla::test::OpInputs;
using dla::test::OpSizes;

/// chunk_size 0 means the naive recurrence. SSD takes no beta.
OpResult run_ssd(const OpInputs& in, double scale, int64_t chunk_size) {
  if (chunk_size == 0) return dla::ops::ssd::naive_recurrent(in.q, in.k, in.v, in.g, scale, in.initial_state);
  return dla::ops::ssd::chunk(in.q, in.k, in.v, in.g, scale, in.initial_state, chunk_size);
}

/// SSD over the whole sequence at once, in float64 (the "quadratic" form of Mamba-2):
/// O = scale ((Q K^T) * D) V + scale (Q exp(G)) S_0 with D[t,s] = exp(G_t - G_s) for s <= t, G = cumsum(g);
/// S_T = exp(G_T) S_0 + sum_s exp(G_T - G_s) k_s v_s^T.
OpResult ssd_quadratic(const OpInputs& in, double scale) {
  const at::Tensor q_BHTN = in.q.to(at::kDouble).movedim(1, 2);
  const at::Tensor k_BHTN = in.k.to(at::kDouble).movedim(1, 2);
  const at::Tensor v_BHTP = in.v.to(at::kDouble).movedim(1, 2);
  const at::Tensor G_BHT = in.g.to(at::kDouble).cumsum(1).movedim(1, 2);
  const int64_t tokens = G_BHT.size(-1);
  const at::Tensor causal_TT = at::ones({tokens, tokens}, at::kDouble).tril();
  const at::Tensor diff_BHTT = G_BHT.unsqueeze(-1) - G_BHT.unsqueeze(-2);
  const at::Tensor D_BHTT = at::where(causal_TT > 0, diff_BHTT, at::zeros_like(diff_BHTT)).exp() * causal_TT;
  at::Tensor out_BHTP = (q_BHTN.matmul(k_BHTN.transpose(-1, -2)) * D_BHTT).matmul(v_BHTP);
  const at::Tensor G_last_BH = G_BHT.select(-1, -1);
  at::Tensor state_BHNP =
      (k_BHTN * (G_last_BH.unsqueeze(-1) - G_BHT).exp().unsqueeze(-1)).transpose(-1, -2).matmul(v_BHTP);
  if (in.initial_state.defined()) {
    const at::Tensor h0_BHNP = in.initial_state.to(at::kDouble);
    out_BHTP = out_BHTP + (q_BHTN * G_BHT.exp().unsqueeze(-1)).matmul(h0_BHNP);
    state_BHNP = state_BHNP + G_last_BH.exp().unsqueeze(-1).unsqueeze(-1) * h0_BHNP;
  }
  return {(out_BHTP * scale).movedim(2, 1), state_BHNP};
}

/// OpInputs to and from a list in the order of kInputNames, for op_gradients; SSD has no beta.
const std::vector<std::string> kInputNames = {"q", "k", "v", "g", "initial_state"};
OpInputs with_tensors(const std::vector<at::Tensor>& x) {
  return {x[0], x[1], x[2], x[3], /*beta=*/at::Tensor(), x[4]};
}
std::vector<at::Tensor> tensors_of(const OpInputs& in) {
  return {in.q, in.k, in.v, in.g, in.initial_state};
}

}  // namespace

TEST_CASE("ssd naive_recurrent matches the quadratic form", "[ops][ssd]") {
  const int64_t tokens = GENERATE(1, 5, 40);
  const bool with_initial_state = GENERATE(false, true);
  const OpSizes sizes = {.batch = 2, .tokens = tokens, .heads = 3, .key_dim = 8, .value_dim = 5};
  CAPTURE(tokens, with_initial_state);
  const OpInputs in = dla::test::random_inputs(sizes, with_initial_state, at::kDouble, /*seed=*/tokens);

  const OpResult ref = ssd_quadratic(in, 0.5);
  const OpResult got = run_ssd(in, 0.5, /*chunk_size=*/0);
  expect_close("out", ref.out, got.out, 1e-12);
  expect_close("final_state", ref.final_state, got.final_state, 1e-12);
}

TEST_CASE("ssd chunk matches naive_recurrent", "[ops][ssd]") {
  const int64_t tokens = GENERATE(1, 2, 63, 64, 65, 130);
  const int64_t chunk_size = GENERATE(16, 64);
  const bool with_initial_state = GENERATE(false, true);
  const OpSizes sizes = {.batch = 2, .tokens = tokens, .heads = 3, .key_dim = 16, .value_dim = 24};
  CAPTURE(tokens, chunk_size, with_initial_state);
  const OpInputs in = dla::test::random_inputs(sizes, with_initial_state, at::kFloat, /*seed=*/tokens);

  const OpResult ref = run_ssd(in, 1.0, /*chunk_size=*/0);
  const OpResult got = run_ssd(in, 1.0, chunk_size);
  expect_close("out", ref.out, got.out, 1e-4);
  expect_close("final_state", ref.final_state, got.final_state, 1e-4);
}

TEST_CASE("ssd chunk gradients match naive_recurrent gradients in float64", "[ops][ssd][grad]") {
  const int64_t tokens = GENERATE(1, 5, 37);
  const int64_t chunk_size = GENERATE(4, 16);
  const OpSizes sizes = {.batch = 2, .tokens = tokens, .heads = 2, .key_dim = 4, .value_dim = 6};
  CAPTURE(tokens, chunk_size);
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/true, at::kDouble, /*seed=*/5);
  dla::test::expect_chunk_gradients_match(
      [](const std::vector<at::Tensor>& x, int64_t chunk) { return run_ssd(with_tensors(x), 1.0, chunk); },
      tensors_of(in), kInputNames, chunk_size, 1e-8);
}

TEST_CASE("ssd chunk takes bfloat16 inputs and stays close to float32", "[ops][ssd]") {
  const OpSizes sizes = {.batch = 2, .tokens = 70, .heads = 2, .key_dim = 16, .value_dim = 24};
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/true, at::kFloat, /*seed=*/11);
  std::vector<at::Tensor> x_bf16;
  for (const auto& x : tensors_of(in))
    x_bf16.push_back(x.to(at::kBFloat16));
  const OpInputs in_bf16 = with_tensors(x_bf16);

  const OpResult ref = run_ssd(in, 1.0, 32);
  const OpResult got = run_ssd(in_bf16, 1.0, 32);
  CHECK(got.out.scalar_type() == at::kBFloat16);
  CHECK(got.final_state.scalar_type() == at::kFloat);
  expect_close("out", ref.out, got.out, 2e-2);
  expect_close("final_state", ref.final_state, got.final_state, 2e-2);
}

TEST_CASE("ssd rejects inputs of mismatched shapes, naming them", "[ops][ssd]") {
  const OpSizes sizes = {.batch = 2, .tokens = 5, .heads = 3, .key_dim = 4, .value_dim = 6};
  OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/true, at::kFloat, /*seed=*/1);
  int64_t chunk_size = 16;
  std::string expected;
  SECTION("k") {
    in.k = at::randn({2, 5, 3, 5});
    expected = "q and k must have the same shape, got [2, 5, 3, 4] and [2, 5, 3, 5]";
  }
  SECTION("v") {
    in.v = at::randn({2, 5, 4, 6});
    expected = "v must be [B, T, H, V] with B, T, H of q, got v [2, 5, 4, 6] and q [2, 5, 3, 4]";
  }
  SECTION("g") {
    in.g = at::randn({2, 5, 3, 1});
    expected = "g must be [B, T, H] with B, T, H of q, got g [2, 5, 3, 1] and q [2, 5, 3, 4]";
  }
  SECTION("initial_state") {
    in.initial_state = at::randn({2, 3, 4});
    expected = "initial_state must be [B, H, K, V] = [2, 3, 4, 6], got [2, 3, 4]";
  }
  SECTION("chunk_size") {
    chunk_size = -3;
    expected = "ssd::chunk: chunk_size must be at least 1, got -3";
  }
  CAPTURE(expected);
  const auto run_chunk = [&] {
    dla::ops::ssd::chunk(in.q, in.k, in.v, in.g, 1.0, in.initial_state, chunk_size);
  };
  const auto run_naive = [&] {
    dla::ops::ssd::naive_recurrent(in.q, in.k, in.v, in.g, 1.0, in.initial_state);
  };
  REQUIRE_THAT(dla::test::c10_error_message(run_chunk), has_substr(expected));
  if (chunk_size >= 1) REQUIRE_THAT(dla::test::c10_error_message(run_naive), has_substr(expected));
}
