// Tests of the mask forms of multi-state linear attention: both backbones against the dla fixtures, the
// Fenwick levels against fla's log-linear reference, the spec's λ ≡ 1 identity with the single-state ops,
// gradients against finite differences, and the input checks.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, L number of λ levels.
#include "dla/memory/mask_form.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/zeros.h>
#include <c10/util/irange.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "dla/io/safetensors.h"
#include "dla/ops/gdn.h"
#include "dla/ops/ssd.h"
#include "ops/op_testing.h"

namespace {

using dla::test::expect_close;
using dla::test::has_substr;
using dla::test::OpInputs;
using dla::test::OpSizes;

/// The Fenwick level table of log-linear attention: bit_length(t XOR s) below the diagonal, 0 on it, −1
/// above.
at::Tensor fenwick_levels_TT(int64_t num_tokens) {
  at::Tensor level_TT = at::full({num_tokens, num_tokens}, -1, at::kLong);
  auto level = level_TT.accessor<int64_t, 2>();
  for (const int64_t t : c10::irange(num_tokens)) {
    for (const int64_t s : c10::irange(t + 1))
      level[t][s] = std::bit_width(static_cast<uint64_t>(t ^ s));
  }
  return level_TT;
}

/// A random level table in [0, L) on and below the diagonal, −1 above: no policy's, but λ ≡ 1 must still
/// give the single-state output.
at::Tensor random_levels_BHTT(const OpSizes& sizes, int64_t num_levels, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor level_BHTT =
      at::randint(num_levels, {sizes.batch, sizes.heads, sizes.tokens, sizes.tokens}, gen, at::kLong);
  return level_BHTT.tril().sub(at::ones_like(level_BHTT).triu(/*diagonal=*/1));
}

/// The scale a dla fixture states, else the README's: 1 for Mamba-2, 1/sqrt(dk) for GDN.
double fixture_scale(const dla::io::SafetensorsReader& file, bool is_gdn, int64_t key_dim) {
  const auto& metadata = file.metadata();
  if (metadata.contains("scale")) return nlohmann::json::parse(metadata.at("scale")).get<double>();
  return is_gdn ? 1.0 / std::sqrt(static_cast<double>(key_dim)) : 1.0;
}

/// Either backbone's mask form on OpInputs (beta is ignored for Mamba-2).
at::Tensor run_mask_form(bool is_gdn, const OpInputs& in, const at::Tensor& lam_weights_BHTT, double scale) {
  if (is_gdn) return dla::memory::gdn_mask_form(in.q, in.k, in.v, in.g, in.beta, lam_weights_BHTT, scale);
  return dla::memory::ssd_mask_form(in.q, in.k, in.v, in.g, lam_weights_BHTT, scale);
}

}  // namespace

TEST_CASE("mask forms match the dla fixtures", "[memory][fixtures]") {
  const std::string backbone = GENERATE(as<std::string>{}, "mamba2", "gdn");
  const bool is_gdn = backbone == "gdn";
  const dla::io::SafetensorsReader file(
      dla::test::fixture_file(fmt::format("dla/dla_{}.safetensors", backbone)));
  const auto& metadata = file.metadata();
  REQUIRE(nlohmann::json::parse(metadata.at("backbone")).get<std::string>() == backbone);
  // The fixtures are written for c = 1, the default of level_weights.
  REQUIRE(nlohmann::json::parse(metadata.at("confidence")).get<double>() == 1.0);

  const OpInputs in = {.q = file.tensor("q"),
                       .k = file.tensor("k"),
                       .v = file.tensor("v"),
                       .g = file.tensor("g"),
                       .beta = is_gdn ? file.tensor("beta") : at::Tensor(),
                       .initial_state = {}};
  const double scale = fixture_scale(file, is_gdn, in.q.size(3));
  CAPTURE(backbone, scale, in.q.sizes(), in.v.sizes());

  // level is stored as F32; its values are small integers, exact in float.
  const at::Tensor lam_weights_BHTT =
      dla::memory::level_weights(file.tensor("level").to(at::kLong), file.tensor("lam"));
  const at::Tensor out = run_mask_form(is_gdn, in, lam_weights_BHTT, scale);
  CHECK(out.scalar_type() == at::kFloat);
  const auto stats = expect_close("o", file.tensor("o"), out, 1e-5);
  WARN(fmt::format("dla_{}: o relative RMS error {:.2e}, max abs diff {:.2e}", backbone, stats.rel_rms_error,
                   stats.max_abs_diff));
}

TEST_CASE("ssd_mask_form with Fenwick levels matches fla's naive_log_linear_attn", "[memory][fixtures]") {
  const dla::io::SafetensorsReader file(dla::test::fixture_file("fla/loglinear_naive.safetensors"));
  const at::Tensor q = file.tensor("q");
  const at::Tensor level_scales_BTHL = file.tensor("level_scales");
  const int64_t num_tokens = q.size(1);
  CAPTURE(q.sizes(), level_scales_BTHL.sizes());
  // Every level the table uses must have a λ.
  REQUIRE(level_scales_BTHL.size(3) >
          static_cast<int64_t>(std::bit_width(static_cast<uint64_t>(num_tokens - 1))));

  const at::Tensor lam_weights_BHTT =
      dla::memory::level_weights(fenwick_levels_TT(num_tokens), level_scales_BTHL);
  const at::Tensor out = dla::memory::ssd_mask_form(q, file.tensor("k"), file.tensor("v"), file.tensor("g"),
                                                    lam_weights_BHTT, /*scale=*/1.0);
  const auto stats = expect_close("o", file.tensor("o"), out, 1e-5);
  WARN(fmt::format("loglinear_naive: o relative RMS error {:.2e}, max abs diff {:.2e}", stats.rel_rms_error,
                   stats.max_abs_diff));
}

TEST_CASE("mask forms with lambda = 1 equal the single-state naive_recurrent", "[memory]") {
  const int64_t tokens = GENERATE(1, 2, 17, 40);
  const std::string levels = GENERATE(as<std::string>{}, "fenwick", "dla fixture", "random");
  const bool is_gdn = GENERATE(false, true);
  const at::ScalarType dtype = GENERATE(at::kFloat, at::kDouble);
  const double tol = dtype == at::kFloat ? 1e-5 : 1e-12;
  CAPTURE(tokens, levels, is_gdn, dtype);

  // Batch and heads of the dla fixtures, so their level tables fit.
  const OpSizes sizes = {.batch = 2, .tokens = tokens, .heads = 2, .key_dim = 8, .value_dim = 12};
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/false, dtype, /*seed=*/tokens);
  at::Tensor level;
  if (levels == "fenwick") {
    level = fenwick_levels_TT(tokens);
  } else if (levels == "dla fixture") {
    const dla::io::SafetensorsReader file(dla::test::fixture_file("dla/dla_gdn.safetensors"));
    const at::Tensor level_BHTT = file.tensor("level").to(at::kLong);
    REQUIRE(level_BHTT.size(2) >= tokens);
    // The levels of the first T tokens do not depend on later ones.
    level = level_BHTT.slice(2, 0, tokens).slice(3, 0, tokens);
  } else {
    level = random_levels_BHTT(sizes, /*num_levels=*/5, /*seed=*/tokens);
  }
  const int64_t num_levels = level.max().item<int64_t>() + 1;
  const at::Tensor lam_BTHL = at::ones({sizes.batch, tokens, sizes.heads, num_levels}, at::dtype(dtype));
  const at::Tensor lam_weights_BHTT = dla::memory::level_weights(level, lam_BTHL);

  const double scale = is_gdn ? 1.0 / std::sqrt(static_cast<double>(sizes.key_dim)) : 0.5;
  const at::Tensor ref =
      is_gdn
          ? dla::ops::gdn::naive_recurrent(in.q, in.k, in.v, in.g, in.beta, scale, /*initial_state=*/{}).out
          : dla::ops::ssd::naive_recurrent(in.q, in.k, in.v, in.g, scale, /*initial_state=*/{}).out;
  const at::Tensor out = run_mask_form(is_gdn, in, lam_weights_BHTT, scale);
  CHECK(out.scalar_type() == dtype);
  expect_close("out", ref, out, tol);
}

TEST_CASE("mask form gradients match finite differences", "[memory]") {
  const bool is_gdn = GENERATE(false, true);
  CAPTURE(is_gdn);
  const OpSizes sizes = {.batch = 1, .tokens = 6, .heads = 2, .key_dim = 3, .value_dim = 4};
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/false, at::kDouble, /*seed=*/7);
  const at::Tensor level_TT = fenwick_levels_TT(sizes.tokens);
  const int64_t num_levels = level_TT.max().item<int64_t>() + 1;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(/*seed=*/11);
  const at::Tensor lam_BTHL =
      at::rand({sizes.batch, sizes.tokens, sizes.heads, num_levels}, gen, at::kDouble) + 0.5;
  const at::Tensor conf_BHTT =
      at::rand({sizes.batch, sizes.heads, sizes.tokens, sizes.tokens}, gen, at::kDouble) + 0.5;
  const at::Tensor out_weight =
      dla::test::random_weight({sizes.batch, sizes.tokens, sizes.heads, sizes.value_dim},
                               /*seed=*/13);
  const double scale = 0.7;

  const std::vector<std::string> names = {"q", "k", "v", "g", "beta", "lam", "conf"};
  // beta does not enter the Mamba-2 form: its gradient stays undefined there.
  const std::vector<at::Tensor> inputs = {in.q, in.k, in.v, in.g, in.beta, lam_BTHL, conf_BHTT};
  const auto loss = [&](const std::vector<at::Tensor>& x) {
    const at::Tensor lam_weights_BHTT = dla::memory::level_weights(level_TT, x[5], x[6]);
    const OpInputs args = {.q = x[0], .k = x[1], .v = x[2], .g = x[3], .beta = x[4], .initial_state = {}};
    return (run_mask_form(is_gdn, args, lam_weights_BHTT, scale) * out_weight).sum();
  };

  std::vector<at::Tensor> leaves;
  for (const auto& x : inputs)
    leaves.push_back(x.detach().clone().requires_grad_(true));
  loss(leaves).backward();

  constexpr double eps = 1e-6;
  for (const auto i : c10::irange(inputs.size())) {
    if (names[i] == "beta" && !is_gdn) continue;
    const at::Tensor grad = leaves[i].grad();
    CAPTURE(names[i]);
    REQUIRE(grad.defined());
    CHECK(grad.isfinite().all().item<bool>());
    CHECK(grad.abs().max().item<double>() > 0);
    // Three entries spread over the tensor: central differences, exact to about eps² in float64.
    for (const int64_t flat : {int64_t{0}, inputs[i].numel() / 2, inputs[i].numel() - 1}) {
      std::vector<at::Tensor> plus(inputs.begin(), inputs.end());
      std::vector<at::Tensor> minus(inputs.begin(), inputs.end());
      plus[i] = inputs[i].clone();
      minus[i] = inputs[i].clone();
      plus[i].view(-1)[flat] += eps;
      minus[i].view(-1)[flat] -= eps;
      const double numeric = (loss(plus).item<double>() - loss(minus).item<double>()) / (2 * eps);
      const double analytic = grad.reshape(-1)[flat].item<double>();
      CAPTURE(flat, numeric, analytic);
      CHECK(std::abs(numeric - analytic) <= 1e-6 * (1 + std::abs(numeric)));
    }
  }
}

TEST_CASE("mask forms reject bad inputs, naming the sizes", "[memory]") {
  const OpSizes sizes = {.batch = 2, .tokens = 5, .heads = 3, .key_dim = 4, .value_dim = 6};
  const OpInputs in = dla::test::random_inputs(sizes, /*with_initial_state=*/false, at::kFloat, /*seed=*/1);
  const at::Tensor lam_BTHL = at::ones({2, 5, 3, 4});
  const at::Tensor level_TT = fenwick_levels_TT(5);
  const at::Tensor lam_weights_BHTT = dla::memory::level_weights(level_TT, lam_BTHL);
  using dla::memory::gdn_mask_form;
  using dla::memory::level_weights;
  using dla::memory::ssd_mask_form;
  using dla::test::c10_error_message;

  SECTION("level_weights") {
    CHECK_THAT(c10_error_message([&] { level_weights(fenwick_levels_TT(4), lam_BTHL); }),
               has_substr("level must be [B, H, T, T] = [2, 3, 5, 5] or [T, T] = [5, 5]") &&
                   has_substr("got [4, 4]"));
    CHECK_THAT(c10_error_message([&] {
                 level_weights(level_TT, at::ones({2, 5, 3}));
               }),
               has_substr("lam must be [B, T, H, L]") && has_substr("got [2, 5, 3]"));
    CHECK_THAT(c10_error_message([&] { level_weights(level_TT.to(at::kFloat), lam_BTHL); }),
               has_substr("level must be an integer tensor"));
    CHECK_THAT(c10_error_message([&] {
                 level_weights(level_TT, at::ones({2, 5, 3, 3}));
               }),
               has_substr("level holds 3") && has_substr("only L = 3 levels"));
    CHECK_THAT(c10_error_message([&] {
                 level_weights(level_TT, lam_BTHL, at::ones({2, 3, 5}));
               }),
               has_substr("conf must be [B, H, T, T] = [2, 3, 5, 5], got [2, 3, 5]"));
  }
  SECTION("ssd_mask_form") {
    CHECK_THAT(
        c10_error_message([&] { ssd_mask_form(in.q, in.k, in.v, in.g, lam_weights_BHTT.slice(3, 1), 1.0); }),
        has_substr("memory::ssd_mask_form: lam_weights must be [B, H, T, T] = [2, 3, 5, 5]") &&
            has_substr("got [2, 3, 5, 4]"));
    CHECK_THAT(
        c10_error_message([&] { ssd_mask_form(in.q, in.k.slice(3, 1), in.v, in.g, lam_weights_BHTT, 1.0); }),
        has_substr("q and k must have the same shape") && has_substr("[2, 5, 3, 3]"));
    CHECK_THAT(
        c10_error_message([&] { ssd_mask_form(in.q, in.k, in.v.slice(1, 1), in.g, lam_weights_BHTT, 1.0); }),
        has_substr("v must be [B, T, H, V]") && has_substr("[2, 4, 3, 6]"));
  }
  SECTION("gdn_mask_form") {
    CHECK_THAT(c10_error_message([&] {
                 gdn_mask_form(in.q, in.k, in.v, in.g, in.beta.slice(2, 1), lam_weights_BHTT, 1.0);
               }),
               has_substr("memory::gdn_mask_form: beta must be [B, T, H]") && has_substr("[2, 5, 2]"));
    CHECK_THAT(
        c10_error_message([&] { gdn_mask_form(in.q, in.k, in.v, in.g, in.beta, lam_weights_BHTT[0], 1.0); }),
        has_substr("lam_weights must be [B, H, T, T] = [2, 3, 5, 5]") && has_substr("got [3, 5, 5]"));
  }
}
