// Tests of the forms of multi-state linear attention over segment tables: the dla fixtures (levels and
// outputs, every form), the Fenwick tables against the level formula and the log-linear fixture, agreement of
// the quadratic, recurrent and chunkwise forms in value and gradient over the grid of the spec, the spec's
// identities, and decoding from a chunkwise prefill.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, S slots, L levels, Q queries.
#include "dla/memory/multi_state.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "dla/io/safetensors.h"
#include "dla/memory/levels.h"
#include "dla/ops/gdn.h"
#include "dla/ops/kernels.h"
#include "dla/ops/ssd.h"
#include "ops/op_testing.h"

namespace {

using dla::memory::BoundaryOptions;
using dla::memory::LevelWeights;
using dla::memory::Recurrence;
using dla::memory::SegmentTable;
using dla::test::expect_close;

BoundaryOptions fixture_options(const dla::io::SafetensorsReader& file) {
  const auto& metadata = file.metadata();
  const auto merge = nlohmann::json::parse(metadata.at("merge")).get<std::string>();
  return {.capacity = nlohmann::json::parse(metadata.at("capacity")).get<int64_t>(),
          .threshold = nlohmann::json::parse(metadata.at("threshold")).get<double>(),
          .merge = merge == "oldest" ? dla::memory::MergeRule::oldest : dla::memory::MergeRule::lowest};
}

/// Which policy a random case draws its segments from.
struct PolicyCase {
  std::string policy;  ///< "fenwick" or "dla"
  int64_t capacity = 4;
  std::string name() const { return policy == "dla" ? fmt::format("dla(M={})", capacity) : policy; }
};

/// A random problem: recurrence terms, scores and λ, all float64 leaves so that gradients can be compared.
struct Problem {
  Recurrence terms;
  at::Tensor u_BTH;
  at::Tensor lam_BTHL;
  SegmentTable segments;
  std::vector<at::Tensor> leaves() const {
    std::vector<at::Tensor> all = {terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, lam_BTHL, u_BTH};
    if (terms.delta_rule()) all.push_back(terms.beta_BTH);
    return all;
  }
  LevelWeights weights() const {
    if (!segments.opener_BHQS.defined()) return {lam_BTHL, at::Tensor()};
    return {lam_BTHL, dla::memory::straight_through_confidence(segments, u_BTH)};
  }
};

int64_t fenwick_slots(int64_t num_tokens) {
  int64_t slots = 1;
  while ((int64_t{1} << slots) < num_tokens)
    ++slots;
  return slots;
}

/// Scores on a grid of 1/8 (ties and u = τ occur), u_0 = 1.
at::Tensor random_scores(int64_t batch, int64_t tokens, int64_t heads, at::Generator& gen) {
  at::Tensor u_BTH = at::randint(9, {batch, tokens, heads}, gen, at::kDouble) / 8;
  u_BTH.select(1, 0).fill_(1);
  return u_BTH;
}

Problem random_problem(bool delta_rule, const PolicyCase& policy, int64_t tokens, uint64_t seed) {
  const dla::test::OpSizes sizes{.batch = 2, .tokens = tokens, .heads = 2, .key_dim = 4, .value_dim = 5};
  const dla::test::OpInputs in = dla::test::random_inputs(sizes, false, at::kDouble, seed);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  Problem p;
  p.terms = {in.q, in.k, in.v, in.g, delta_rule ? in.beta : at::Tensor(), delta_rule ? 0.5 : 1.0};
  p.u_BTH = random_scores(sizes.batch, tokens, sizes.heads, gen);
  if (policy.policy == "dla") {
    p.segments =
        dla::memory::dla_segments(p.u_BTH.to(at::kFloat), {.capacity = policy.capacity, .threshold = 0.5});
  } else {
    p.segments = dla::memory::fenwick_segments(tokens, fenwick_slots(tokens));
  }
  p.lam_BTHL =
      at::rand({sizes.batch, tokens, sizes.heads, p.segments.num_slots() + 1}, gen, at::kDouble) + 0.25;
  return p;
}

/// Gradients of sum(out * weight) with respect to every leaf of the problem, for one form.
std::vector<at::Tensor> gradients(const Problem& p, const std::function<at::Tensor(const Problem&)>& form,
                                  const at::Tensor& out_weight) {
  Problem copy = p;
  std::vector<at::Tensor*> leaves = {&copy.terms.q_BTHK, &copy.terms.k_BTHK, &copy.terms.v_BTHV,
                                     &copy.terms.g_BTH,  &copy.lam_BTHL,     &copy.u_BTH};
  if (copy.terms.delta_rule()) leaves.push_back(&copy.terms.beta_BTH);
  for (at::Tensor* leaf : leaves)
    *leaf = leaf->detach().clone().requires_grad_(true);
  (form(copy) * out_weight).sum().backward();
  std::vector<at::Tensor> grads;
  for (at::Tensor* leaf : leaves)
    grads.push_back(leaf->grad().defined() ? leaf->grad() : at::zeros_like(*leaf));
  return grads;
}

const char* const kLeafNames[] = {"dq", "dk", "dv", "dg", "dlam", "du", "dbeta"};

}  // namespace

TEST_CASE("every form matches the dla fixtures", "[memory][fixtures]") {
  const std::string backbone = GENERATE(as<std::string>{}, "mamba2", "gdn");
  CAPTURE(backbone);
  const dla::io::SafetensorsReader file(
      dla::test::fixture_file(fmt::format("dla/dla_{}.safetensors", backbone)));
  const BoundaryOptions options = fixture_options(file);
  const double scale = nlohmann::json::parse(file.metadata().at("scale")).get<double>();
  const Recurrence terms{file.tensor("q"),
                         file.tensor("k"),
                         file.tensor("v"),
                         file.tensor("g"),
                         backbone == "gdn" ? file.tensor("beta") : at::Tensor(),
                         scale};
  const at::Tensor u_BTH = file.tensor("u");
  const int64_t tokens = u_BTH.size(1);

  const SegmentTable segments = dla::memory::dla_segments(u_BTH, options);
  const at::Tensor level_BHTT = dla::memory::level_table(segments, tokens);
  CHECK(at::equal(level_BHTT, file.tensor("level").to(at::kLong)));

  // The fixtures hold c = 1; λ comes from the file.
  const LevelWeights weights{file.tensor("lam"), at::Tensor()};
  const at::Tensor o_ref = file.tensor("o");
  expect_close("quadratic", o_ref, dla::memory::quadratic(terms, weights, segments), 1e-5);
  expect_close("recurrent", o_ref, dla::memory::recurrent(terms, weights, segments).out_BTHV, 1e-5);
  const int64_t chunk = GENERATE(7, 16, 64);
  CAPTURE(chunk);
  expect_close("chunkwise", o_ref, dla::memory::chunkwise(terms, weights, segments, chunk).out_BTHV, 1e-5);
}

TEST_CASE("dla_segments agrees with the boundary scan on random scores", "[memory]") {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (const int64_t capacity : {1, 2, 3, 5, 8}) {
    for (const auto merge : {dla::memory::MergeRule::lowest, dla::memory::MergeRule::oldest}) {
      CAPTURE(capacity, static_cast<int>(merge));
      const at::Tensor u_BTH = random_scores(3, 90, 2, gen).to(at::kFloat);
      const BoundaryOptions options{.capacity = capacity, .threshold = 0.5, .merge = merge};
      const SegmentTable segments = dla::memory::dla_segments(u_BTH, options);
      const at::Tensor expected_BHTT =
          dla::memory::dla_levels(dla::memory::boundary_death_times(u_BTH, options));
      CHECK(at::equal(dla::memory::level_table(segments, 90), expected_BHTT));
      // The cache holds at most M segments, newest first: starts strictly fall over the used slots.
      const at::Tensor start_BHQS = segments.start_BHQS;
      const at::Tensor used_BHQS = start_BHQS >= 0;
      CHECK(used_BHQS.sum(-1).max().item<int64_t>() <= capacity);
      const at::Tensor both_used =
          used_BHQS.narrow(3, 0, capacity - 1) & used_BHQS.narrow(3, 1, capacity - 1);
      const at::Tensor falls = start_BHQS.narrow(3, 0, capacity - 1) > start_BHQS.narrow(3, 1, capacity - 1);
      CHECK((both_used & falls.logical_not()).sum().item<int64_t>() == 0);
    }
  }
}

TEST_CASE("fenwick_segments gives the Fenwick levels", "[memory]") {
  for (const int64_t tokens : {1, 2, 7, 64, 100, 257}) {
    CAPTURE(tokens);
    const SegmentTable segments = dla::memory::fenwick_segments(tokens, fenwick_slots(tokens) + 1);
    CHECK(at::equal(dla::memory::level_table(segments, tokens).squeeze(0).squeeze(0),
                    dla::memory::fenwick_levels(tokens)));
  }
  CHECK_THAT(dla::test::c10_error_message([] { dla::memory::fenwick_segments(9, 3); }),
             dla::test::has_substr("9 tokens need more than the 3 Fenwick levels"));
}

TEST_CASE("the fenwick forms give the log-linear fixture", "[memory][fixtures]") {
  const dla::io::SafetensorsReader file(dla::test::fixture_file("fla/loglinear_naive.safetensors"));
  const at::Tensor lam_BTHL = file.tensor("level_scales");
  const int64_t tokens = lam_BTHL.size(1);
  const Recurrence terms{file.tensor("q"), file.tensor("k"), file.tensor("v"),
                         file.tensor("g"), at::Tensor(),     1.0};
  const SegmentTable segments = dla::memory::fenwick_segments(tokens, lam_BTHL.size(3) - 1);
  const LevelWeights weights{lam_BTHL, at::Tensor()};
  const at::Tensor o_ref = file.tensor("o");
  expect_close("quadratic", o_ref, dla::memory::quadratic(terms, weights, segments), 1e-5);
  expect_close("recurrent", o_ref, dla::memory::recurrent(terms, weights, segments).out_BTHV, 1e-5);
  const int64_t chunk = GENERATE(16, 64);
  CAPTURE(chunk);
  expect_close("chunkwise", o_ref, dla::memory::chunkwise(terms, weights, segments, chunk).out_BTHV, 1e-5);
}

TEST_CASE("quadratic, recurrent and chunkwise agree in value and gradient", "[memory]") {
  const bool delta_rule = GENERATE(false, true);
  const PolicyCase policy = GENERATE(PolicyCase{"fenwick"}, PolicyCase{"dla", 1}, PolicyCase{"dla", 2},
                                     PolicyCase{"dla", 4}, PolicyCase{"dla", 8});
  const int64_t tokens = GENERATE(1, 2, 63, 64, 65, 257);
  const std::string backbone = delta_rule ? "gdn" : "mamba2";
  const std::string policy_name = policy.name();
  CAPTURE(backbone, policy_name, tokens);
  const Problem p = random_problem(delta_rule, policy, tokens, 100 + static_cast<uint64_t>(tokens));
  const at::Tensor out_weight = dla::test::random_weight(p.terms.v_BTHV.sizes(), 3);

  const auto quadratic = [](const Problem& q) {
    return dla::memory::quadratic(q.terms, q.weights(), q.segments);
  };
  const auto recurrent = [](const Problem& q) {
    return dla::memory::recurrent(q.terms, q.weights(), q.segments).out_BTHV;
  };
  const at::Tensor ref = quadratic(p);
  expect_close("recurrent", ref, recurrent(p), 1e-12);
  const std::vector<at::Tensor> grads_ref = gradients(p, quadratic, out_weight);
  const std::vector<at::Tensor> grads_recurrent = gradients(p, recurrent, out_weight);
  for (size_t i = 0; i < grads_ref.size(); ++i)
    expect_close(std::string("recurrent ") + kLeafNames[i], grads_ref[i], grads_recurrent[i], 1e-11);
  for (const int64_t chunk : {16, 64}) {
    CAPTURE(chunk);
    const auto chunkwise = [chunk](const Problem& q) {
      return dla::memory::chunkwise(q.terms, q.weights(), q.segments, chunk).out_BTHV;
    };
    expect_close("chunkwise", ref, chunkwise(p), 1e-12);
    const std::vector<at::Tensor> grads_chunk = gradients(p, chunkwise, out_weight);
    for (size_t i = 0; i < grads_ref.size(); ++i)
      expect_close(std::string("chunkwise ") + kLeafNames[i], grads_ref[i], grads_chunk[i], 1e-11);
  }
  // With DLA the scores get gradient through the confidences of alive boundaries.
  if (policy.policy == "dla" && policy.capacity > 1 && tokens > 60)
    CHECK(grads_ref[5].abs().sum().item<double>() > 0);
}

TEST_CASE("chunkwise on the fused slot pass agrees with the quadratic form in value and gradient",
          "[memory][fused]") {
  const bool delta_rule = GENERATE(false, true);
  const PolicyCase policy = GENERATE(PolicyCase{"fenwick"}, PolicyCase{"dla", 4});
  const std::string policy_name = policy.name();
  CAPTURE(delta_rule, policy_name);
  const Problem p = random_problem(delta_rule, policy, 70, 41);
  const at::Tensor out_weight = dla::test::random_weight(p.terms.v_BTHV.sizes(), 3);
  const auto quadratic = [](const Problem& q) {
    return dla::memory::quadratic(q.terms, q.weights(), q.segments);
  };
  const auto fused_chunkwise = [](const Problem& q) {
    const dla::test::KernelChoiceScope fused(dla::ops::KernelChoice::fused);
    return dla::memory::chunkwise(q.terms, q.weights(), q.segments, 16).out_BTHV;
  };
  expect_close("chunkwise", quadratic(p), fused_chunkwise(p), 1e-12);
  const std::vector<at::Tensor> grads_ref = gradients(p, quadratic, out_weight);
  const std::vector<at::Tensor> grads_fused = gradients(p, fused_chunkwise, out_weight);
  for (size_t i = 0; i < grads_ref.size(); ++i)
    expect_close(std::string("fused chunkwise ") + kLeafNames[i], grads_ref[i], grads_fused[i], 1e-11);
}

TEST_CASE("λ ≡ 1 gives the single-state ops for every policy", "[memory]") {
  const bool delta_rule = GENERATE(false, true);
  const PolicyCase policy = GENERATE(PolicyCase{"fenwick"}, PolicyCase{"dla", 1}, PolicyCase{"dla", 8});
  const Problem p = random_problem(delta_rule, policy, 70, 11);
  const at::Tensor ones_BTHL = at::ones_like(p.lam_BTHL);
  const dla::ops::OpResult single =
      delta_rule ? dla::ops::gdn::chunk(p.terms.q_BTHK, p.terms.k_BTHK, p.terms.v_BTHV, p.terms.g_BTH,
                                        p.terms.beta_BTH, p.terms.scale, {}, 16)
                 : dla::ops::ssd::chunk(p.terms.q_BTHK, p.terms.k_BTHK, p.terms.v_BTHV, p.terms.g_BTH,
                                        p.terms.scale, {}, 16);
  const dla::memory::MultiStateResult multi =
      dla::memory::chunkwise(p.terms, {ones_BTHL, p.weights().conf_BHQS}, p.segments, 16);
  expect_close("out", single.out, multi.out_BTHV, 1e-12);
  // The states always add up to the single state (spec §1).
  expect_close("sum of states", single.final_state, multi.states_BHSKV.sum(2), 1e-12);
}

TEST_CASE("dla with M >= T and every token a boundary keeps one state per token", "[memory]") {
  const int64_t tokens = 12;
  const at::Tensor u_BTH = at::ones({1, tokens, 1}, at::kFloat);
  const SegmentTable segments = dla::memory::dla_segments(u_BTH, {.capacity = tokens, .threshold = 0.5});
  const at::Tensor level_TT = dla::memory::level_table(segments, tokens).squeeze(0).squeeze(0);
  const at::Tensor t_T1 = at::arange(tokens).unsqueeze(1), s_T = at::arange(tokens);
  CHECK(at::equal(level_TT, at::where(s_T <= t_T1, t_T1 - s_T, -1)));
}

TEST_CASE("recurrent decoding from a chunkwise prefill continues the parallel form", "[memory]") {
  const bool delta_rule = GENERATE(false, true);
  const PolicyCase policy = GENERATE(PolicyCase{"fenwick"}, PolicyCase{"dla", 3});
  const int64_t tokens = 90, prefill = 37;
  const Problem p = random_problem(delta_rule, policy, tokens, 21);
  const at::Tensor full = dla::memory::chunkwise(p.terms, p.weights(), p.segments, 16).out_BTHV;

  const auto head = [&](const at::Tensor& x) { return x.narrow(1, 0, prefill); };
  const auto tail = [&](const at::Tensor& x) { return x.narrow(1, prefill, tokens - prefill); };
  const Recurrence head_terms{head(p.terms.q_BTHK),
                              head(p.terms.k_BTHK),
                              head(p.terms.v_BTHV),
                              head(p.terms.g_BTH),
                              delta_rule ? head(p.terms.beta_BTH) : at::Tensor(),
                              p.terms.scale};
  const Recurrence tail_terms{tail(p.terms.q_BTHK),
                              tail(p.terms.k_BTHK),
                              tail(p.terms.v_BTHV),
                              tail(p.terms.g_BTH),
                              delta_rule ? tail(p.terms.beta_BTH) : at::Tensor(),
                              p.terms.scale};
  SegmentTable head_segments, tail_segments;
  if (policy.policy == "dla") {
    dla::memory::BoundaryCache cache(2, 2, {.capacity = policy.capacity, .threshold = 0.5});
    head_segments = dla::memory::dla_segments(head(p.u_BTH).to(at::kFloat), cache);
    tail_segments = dla::memory::dla_segments(tail(p.u_BTH).to(at::kFloat), cache);
  } else {
    head_segments = p.segments;
    tail_segments = {p.segments.start_BHQS.narrow(2, prefill, tokens - prefill + 1), at::Tensor(),
                     at::Tensor()};
  }
  // Decoding reads confidences as 1 (their forward value), so λ alone weighs the states.
  const dla::memory::MultiStateResult prefilled =
      dla::memory::chunkwise(head_terms, {head(p.lam_BTHL), at::Tensor()}, head_segments, 16);
  const at::Tensor decoded = dla::memory::recurrent(tail_terms, {tail(p.lam_BTHL), at::Tensor()},
                                                    tail_segments, prefilled.states_BHSKV, prefill)
                                 .out_BTHV;
  expect_close("prefill", head(full), prefilled.out_BTHV, 1e-12);
  expect_close("decode", tail(full), decoded, 1e-12);
}

TEST_CASE("on the GPU every form agrees with the float64 CPU oracle", "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the GPU forms are not exercised on this machine");
    return;
  }
  const bool delta_rule = GENERATE(false, true);
  const PolicyCase policy = GENERATE(PolicyCase{"fenwick"}, PolicyCase{"dla", 4});
  const int64_t tokens = GENERATE(65, 257);
  const std::string policy_name = policy.name();
  CAPTURE(delta_rule, policy_name, tokens);
  const Problem p = random_problem(delta_rule, policy, tokens, 300 + static_cast<uint64_t>(tokens));
  const at::Tensor ref = dla::memory::quadratic(p.terms, p.weights(), p.segments);

  const auto cuda = [](const at::Tensor& x) { return x.defined() ? x.to(at::kCUDA, at::kFloat) : x; };
  const Recurrence terms{cuda(p.terms.q_BTHK), cuda(p.terms.k_BTHK),   cuda(p.terms.v_BTHV),
                         cuda(p.terms.g_BTH),  cuda(p.terms.beta_BTH), p.terms.scale};
  const at::Tensor u_BTH = cuda(p.u_BTH);
  SegmentTable segments;
  if (policy.policy == "dla") {
    segments = dla::memory::dla_segments(u_BTH, {.capacity = policy.capacity, .threshold = 0.5});
    REQUIRE(segments.start_BHQS.is_cuda());
    CHECK(at::equal(segments.start_BHQS.cpu(), p.segments.start_BHQS));
  } else {
    // With its host copy, as the fenwick policy keeps it: chunkwise leaves out the slots no chunk boundary
    // holds.
    segments = dla::memory::on_device(p.segments, at::kCUDA);
  }
  const LevelWeights weights{cuda(p.lam_BTHL), policy.policy == "dla"
                                                   ? dla::memory::straight_through_confidence(segments, u_BTH)
                                                   : at::Tensor()};
  expect_close("quadratic", ref, dla::memory::quadratic(terms, weights, segments).cpu(), 1e-5);
  expect_close("recurrent", ref, dla::memory::recurrent(terms, weights, segments).out_BTHV.cpu(), 1e-5);
  expect_close("chunkwise", ref, dla::memory::chunkwise(terms, weights, segments, 64).out_BTHV.cpu(), 1e-5);

  // From bfloat16 inputs chunkwise multiplies in TF32 and runs the slot pass as CUDA kernels; the oracle
  // sees the same rounded inputs.
  const auto rounded = [](const at::Tensor& x) {
    return x.defined() ? x.to(at::kBFloat16).to(at::kDouble) : x;
  };
  const auto bf16 = [](const at::Tensor& x) { return x.defined() ? x.to(at::kCUDA, at::kBFloat16) : x; };
  const Recurrence rounded_terms{rounded(p.terms.q_BTHK), rounded(p.terms.k_BTHK),   rounded(p.terms.v_BTHV),
                                 rounded(p.terms.g_BTH),  rounded(p.terms.beta_BTH), p.terms.scale};
  const Recurrence bf16_terms{bf16(p.terms.q_BTHK), bf16(p.terms.k_BTHK),   bf16(p.terms.v_BTHV),
                              bf16(p.terms.g_BTH),  bf16(p.terms.beta_BTH), p.terms.scale};
  expect_close("chunkwise from bfloat16", dla::memory::quadratic(rounded_terms, p.weights(), p.segments),
               dla::memory::chunkwise(bf16_terms, weights, segments, 64).out_BTHV.cpu(), 1e-2);
}
