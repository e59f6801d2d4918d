// Tests of the DLA boundary scan and level tables: the dla fixtures exactly, that the fixtures tell the wrong
// readings of the spec apart, a brute-force simulation of the segment cache, the Fenwick levels against the
// log-linear fixture, the spec's identity and the input checks.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, L levels.
#include "dla/memory/levels.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "dla/io/safetensors.h"
#include "ops/op_testing.h"

namespace {

using dla::memory::BoundaryOptions;
using dla::memory::MergeRule;
using dla::test::has_substr;

/// The policy settings stored in a dla fixture's metadata (values are JSON strings).
BoundaryOptions fixture_options(const dla::io::SafetensorsReader& file) {
  const auto& metadata = file.metadata();
  const auto merge = nlohmann::json::parse(metadata.at("merge")).get<std::string>();
  REQUIRE((merge == "lowest" || merge == "oldest"));
  return {.capacity = nlohmann::json::parse(metadata.at("capacity")).get<int64_t>(),
          .threshold = nlohmann::json::parse(metadata.at("threshold")).get<double>(),
          .merge = merge == "lowest" ? MergeRule::lowest : MergeRule::oldest};
}

/// CHECKs that two integer tensors are equal, reporting how many entries differ.
void check_equal(const std::string& name, const at::Tensor& ref, const at::Tensor& got) {
  CAPTURE(name, ref.sizes(), got.sizes());
  REQUIRE(ref.sizes() == got.sizes());
  const int64_t num_different = ref.ne(got).sum().item<int64_t>();
  CHECK(num_different == 0);
}

/// What the cache simulation records for one sequence of scores.
struct Simulation {
  std::vector<int64_t> death_T;
  std::vector<std::vector<int64_t>> level_TT;
};

/// A deliberately plain segment cache: the alive boundaries in a vector in time order; per token, read the
/// levels of every key, then insert the token if it is a candidate and evict on overflow. `ties_evict_newer`
/// is a wrong reading of the spec, kept to show that the fixtures reject it.
Simulation simulate_cache(const std::vector<float>& u_T, const BoundaryOptions& options,
                          bool ties_evict_newer = false) {
  const auto num_tokens = static_cast<int64_t>(u_T.size());
  Simulation sim{std::vector<int64_t>(num_tokens, -1),
                 std::vector<std::vector<int64_t>>(num_tokens, std::vector<int64_t>(num_tokens, -1))};
  if (num_tokens > 0) sim.death_T[0] = num_tokens;
  std::vector<int64_t> alive;
  for (int64_t t = 0; t < num_tokens; ++t) {
    sim.level_TT[t][t] = 0;
    for (int64_t s = 0; s < t; ++s) {
      sim.level_TT[t][s] = 1 + std::count_if(alive.begin(), alive.end(), [&](int64_t r) { return r > s; });
    }
    if (t == 0 || !(u_T[t] >= static_cast<float>(options.threshold))) continue;
    alive.push_back(t);
    sim.death_T[t] = num_tokens;
    if (static_cast<int64_t>(alive.size()) > options.capacity - 1) {
      auto victim = alive.begin();
      if (options.merge == MergeRule::lowest) {
        for (auto it = alive.begin(); it != alive.end(); ++it) {
          const bool lower = u_T[*it] < u_T[*victim];
          const bool tie_wins = u_T[*it] == u_T[*victim] && ties_evict_newer;
          if (lower || tie_wins) victim = it;
        }
      }
      sim.death_T[*victim] = t;
      alive.erase(victim);
    }
    REQUIRE(static_cast<int64_t>(alive.size()) <= options.capacity - 1);
    REQUIRE(std::is_sorted(alive.begin(), alive.end()));
  }
  return sim;
}

/// The death times the simulation gives for every (batch, head) of u_BTH, as [B,H,T].
at::Tensor simulate_death_times(const at::Tensor& u_BTH, const BoundaryOptions& options,
                                bool ties_evict_newer) {
  const at::Tensor u_BHT = u_BTH.transpose(1, 2).contiguous();
  at::Tensor death_BHT = at::empty(u_BHT.sizes(), at::kLong);
  for (int64_t b = 0; b < u_BHT.size(0); ++b) {
    for (int64_t h = 0; h < u_BHT.size(1); ++h) {
      const at::Tensor u_T = u_BHT[b][h];
      const std::vector<float> scores(u_T.data_ptr<float>(), u_T.data_ptr<float>() + u_T.numel());
      const Simulation sim = simulate_cache(scores, options, ties_evict_newer);
      death_BHT[b][h].copy_(at::tensor(sim.death_T, at::kLong));
    }
  }
  return death_BHT;
}

const char* const kDlaFixtures[] = {"dla/dla_gdn.safetensors", "dla/dla_mamba2.safetensors"};

}  // namespace

TEST_CASE("boundary_death_times and dla_levels match the dla fixtures", "[memory]") {
  const std::string name = GENERATE(kDlaFixtures[0], kDlaFixtures[1]);
  CAPTURE(name);
  const dla::io::SafetensorsReader file(dla::test::fixture_file(name));
  const BoundaryOptions options = fixture_options(file);

  const at::Tensor death_BHT = dla::memory::boundary_death_times(file.tensor("u"), options);
  check_equal("death", file.tensor("death").to(at::kLong), death_BHT);
  check_equal("level", file.tensor("level").to(at::kLong), dla::memory::dla_levels(death_BHT));
}

TEST_CASE("the dla fixtures reject the wrong readings of the spec", "[memory]") {
  const std::string name = GENERATE(kDlaFixtures[0], kDlaFixtures[1]);
  CAPTURE(name);
  const dla::io::SafetensorsReader file(dla::test::fixture_file(name));
  const BoundaryOptions options = fixture_options(file);
  const at::Tensor u_BTH = file.tensor("u");
  const at::Tensor death_BHT = file.tensor("death").to(at::kLong);
  const auto differs = [&](const at::Tensor& wrong_BHT) { return !at::equal(wrong_BHT, death_BHT); };

  // The right reading, simulated, agrees: the wrong ones below differ only in the rule they break.
  CHECK_FALSE(differs(simulate_death_times(u_BTH, options, /*ties_evict_newer=*/false)));
  CHECK(differs(simulate_death_times(u_BTH, options, /*ties_evict_newer=*/true)));

  BoundaryOptions strict = options;
  strict.threshold = options.threshold + 1e-6;  // scores are multiples of 1/32, so this is u > τ
  CHECK(differs(dla::memory::boundary_death_times(u_BTH, strict)));

  BoundaryOptions smaller = options;
  smaller.capacity = options.capacity - 1;
  CHECK(differs(dla::memory::boundary_death_times(u_BTH, smaller)));

  BoundaryOptions oldest = options;
  oldest.merge = MergeRule::oldest;
  CHECK(differs(dla::memory::boundary_death_times(u_BTH, oldest)));
}

TEST_CASE("boundary_death_times and dla_levels match a simulated cache", "[memory]") {
  const int64_t capacity = GENERATE(1, 2, 3, 4, 8);
  const MergeRule merge = GENERATE(MergeRule::lowest, MergeRule::oldest);
  const int64_t batch = 2, heads = 3;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    std::mt19937_64 rng(seed * 16 + static_cast<uint64_t>(capacity));
    const auto tokens = static_cast<int64_t>(std::uniform_int_distribution<int>(1, 80)(rng));
    // Multiples of 1/8, so ties and scores equal to the threshold are common.
    std::uniform_int_distribution<int> eighths(0, 8);
    const BoundaryOptions options{.capacity = capacity, .threshold = eighths(rng) / 8.0, .merge = merge};
    at::Tensor u_BTH = at::empty({batch, tokens, heads}, at::kFloat);
    auto u = u_BTH.accessor<float, 3>();
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t h = 0; h < heads; ++h)
          u[b][t][h] = static_cast<float>(eighths(rng)) / 8.0f;
      }
    }
    CAPTURE(seed, tokens, capacity, options.threshold, merge == MergeRule::lowest);

    const at::Tensor death_BHT = dla::memory::boundary_death_times(u_BTH, options);
    const at::Tensor level_BHTT = dla::memory::dla_levels(death_BHT);
    const auto death = death_BHT.accessor<int64_t, 3>();
    const auto level = level_BHTT.accessor<int64_t, 4>();
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<float> scores(tokens);
        for (int64_t t = 0; t < tokens; ++t)
          scores[t] = u[b][t][h];
        const Simulation sim = simulate_cache(scores, options);
        for (int64_t t = 0; t < tokens; ++t) {
          CAPTURE(b, h, t);
          REQUIRE(death[b][h][t] == sim.death_T[t]);
          for (int64_t s = 0; s < tokens; ++s) {
            CAPTURE(s);
            REQUIRE(level[b][h][t][s] == sim.level_TT[t][s]);
            if (s < t) {
              REQUIRE(level[b][h][t][s] >= 1);
              REQUIRE(level[b][h][t][s] <= capacity);
            }
            // Older keys sit in older (or the same) segments.
            if (s + 1 < t) REQUIRE(level[b][h][t][s] >= level[b][h][t][s + 1]);
          }
        }
      }
    }
  }
}

TEST_CASE("dla_levels is t - s when every token opens its own segment", "[memory]") {
  const int64_t tokens = GENERATE(1, 7, 30);
  const int64_t capacity = tokens + GENERATE(0, 5);
  CAPTURE(tokens, capacity);
  const at::Tensor u_BTH = at::ones({2, tokens, 3}, at::kFloat);
  const at::Tensor level_BHTT =
      dla::memory::dla_levels(dla::memory::boundary_death_times(u_BTH, {.capacity = capacity}));
  const at::Tensor t_minus_s_TT = at::arange(tokens, at::kLong).unsqueeze(1) - at::arange(tokens, at::kLong);
  const at::Tensor expected_TT = t_minus_s_TT.masked_fill(t_minus_s_TT < 0, -1);
  check_equal("level", expected_TT.expand_as(level_BHTT), level_BHTT);
}

TEST_CASE("fenwick_levels is the bit length of t XOR s", "[memory]") {
  const int64_t tokens = GENERATE(1, 2, 3, 8, 9, 50, 64, 65);
  CAPTURE(tokens);
  const at::Tensor level_TT = dla::memory::fenwick_levels(tokens);
  REQUIRE(level_TT.sizes() == at::IntArrayRef{tokens, tokens});
  const auto level = level_TT.accessor<int64_t, 2>();
  std::set<int64_t> distinct;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t s = 0; s < tokens; ++s) {
      int64_t bit_length = 0;
      for (int64_t x = t ^ s; x > 0; x >>= 1)
        ++bit_length;
      CAPTURE(t, s);
      REQUIRE(level[t][s] == (s <= t ? bit_length : -1));
      if (s <= t) distinct.insert(level[t][s]);
    }
  }
  int64_t ceil_log2 = 0;
  while ((int64_t{1} << ceil_log2) < tokens)
    ++ceil_log2;
  CHECK(static_cast<int64_t>(distinct.size()) == ceil_log2 + 1);
}

TEST_CASE("fenwick_levels gives the log-linear fixture's output", "[memory]") {
  const dla::io::SafetensorsReader file(dla::test::fixture_file("fla/loglinear_naive.safetensors"));
  const at::Tensor q_BHTK = file.tensor("q").to(at::kDouble).movedim(1, 2);
  const at::Tensor k_BHTK = file.tensor("k").to(at::kDouble).movedim(1, 2);
  const at::Tensor v_BHTV = file.tensor("v").to(at::kDouble).movedim(1, 2);
  const at::Tensor G_BHT = file.tensor("g").to(at::kDouble).cumsum(1).movedim(1, 2);
  const at::Tensor scales_BHTL = file.tensor("level_scales").to(at::kDouble).movedim(1, 2);
  const int64_t tokens = q_BHTK.size(2), num_levels = scales_BHTL.size(-1);
  CAPTURE(tokens, num_levels);

  const at::Tensor level_TT = dla::memory::fenwick_levels(tokens);
  CHECK(level_TT.max().item<int64_t>() + 1 == num_levels);

  // Mamba-2 mask form without scale: O = ((Q K^T) * D * Λ) V, Λ[t,s] = level_scales[t, level(t,s)].
  const at::Tensor causal_TT = level_TT >= 0;
  const at::Tensor diff_BHTT = G_BHT.unsqueeze(-1) - G_BHT.unsqueeze(-2);
  const at::Tensor D_BHTT = diff_BHTT.masked_fill(causal_TT.logical_not(), -INFINITY).exp();
  const at::Tensor index_BHTT =
      level_TT.clamp_min(0).expand({q_BHTK.size(0), q_BHTK.size(1), tokens, tokens});
  const at::Tensor lambda_BHTT = scales_BHTL.gather(-1, index_BHTT);
  const at::Tensor o_BHTV = (q_BHTK.matmul(k_BHTK.transpose(-1, -2)) * D_BHTT * lambda_BHTT).matmul(v_BHTV);
  dla::test::expect_close("o", file.tensor("o").to(at::kDouble), o_BHTV.movedim(2, 1), 1e-5);
}

TEST_CASE("boundary_death_times and dla_levels check their input", "[memory]") {
  const at::Tensor u_BTH = at::ones({2, 5, 3}, at::kFloat);
  CHECK_THAT(dla::test::c10_error_message([&] { dla::memory::boundary_death_times(u_BTH[0], {}); }),
             has_substr("u must be [B,T,H], got 2 dims"));
  CHECK_THAT(
      dla::test::c10_error_message([&] { dla::memory::boundary_death_times(u_BTH.to(at::kDouble), {}); }),
      has_substr("u must be float32"));
  CHECK_THAT(dla::test::c10_error_message([&] { dla::memory::boundary_death_times(u_BTH, {.capacity = 0}); }),
             has_substr("capacity must be >= 1"));
  CHECK_THAT(dla::test::c10_error_message([&] {
               dla::memory::dla_levels(at::zeros({2, 3}, at::kLong));
             }),
             has_substr("death must be [B,H,T]"));
  CHECK_THAT(dla::test::c10_error_message([&] {
               dla::memory::dla_levels(at::zeros({2, 3, 5}, at::kFloat));
             }),
             has_substr("death must be int64"));
}
