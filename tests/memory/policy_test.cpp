// The memory policies as modules: the ratio loss against its formula, gradients reaching the boundary scorer
// and the level scales, stride boundaries, parameter names on both sides of the fla name table, and the
// errors for bad memory options.
// Shapes: B batch, T tokens, H heads.
#include "dla/memory/dla_policy.h"

#include <cmath>

#include <ATen/ATen.h>

#include "catch.h"
#include "checkpoint/checkpoint_testing.h"
#include "dla/checkpoint/fla_names.h"
#include "dla/config/run_config.h"
#include "dla/memory/fenwick_policy.h"

namespace dla::test {
namespace {

memory::MemoryOptions dla_options() {
  memory::MemoryOptions options;
  options.policy = memory::PolicyKind::dla;
  options.capacity = 4;
  options.score_dim = 8;
  return options;
}

}  // namespace

TEST_CASE("the ratio loss is the H-Net formula", "[memory]") {
  memory::MemoryOptions options = dla_options();
  options.target_rate = 0.25;
  const memory::DlaPolicyImpl policy(options, 16, 1);
  // Tokens 1..4 score 0.6, 0.2, 0.5, 0.1: F = 2/4 candidates (u >= 0.5), G = 0.35, N = 4.
  const at::Tensor u_BTH = at::tensor({1.0f, 0.6f, 0.2f, 0.5f, 0.1f}).view({1, 5, 1});
  const double expected = 4.0 / 3.0 * (3 * 0.5 * 0.35 + 0.5 * 0.65);
  CHECK(std::abs(policy.ratio_loss(u_BTH).item<double>() - expected) <= 1e-6);
  // At the target rate with F = G it is 1, its minimum over such points.
  const at::Tensor at_target = at::tensor({1.0f, 1.0f, 0.0f, 0.0f, 0.0f}).view({1, 5, 1});
  CHECK(std::abs(policy.ratio_loss(at_target).item<double>() - 1.0) <= 1e-6);
}

TEST_CASE("the boundary scorer, λ projection and level scales receive gradients", "[memory]") {
  const auto mixer = GENERATE(model::MixerKind::gdn, model::MixerKind::mamba2);
  const auto config = small_model_config(mixer, {"model.memory.policy=dla", "model.memory.capacity=4",
                                                 "model.memory.threshold=0.2", "model.memory.rate_loss=0.1"});
  model::CausalLM lm(config.config.model);
  perturb_parameters(*lm, 3);
  lm->train();
  at::manual_seed(1);
  const at::Tensor ids = at::randint(64, {2, 40}, at::kLong);
  const at::Tensor auxiliary = lm->auxiliary_loss();
  CHECK_FALSE(auxiliary.defined());
  const at::Tensor loss = model::next_token_loss(lm->forward(ids), ids);
  REQUIRE(lm->auxiliary_loss().defined());
  (loss + lm->auxiliary_loss()).backward();
  for (const auto& item : lm->named_parameters()) {
    if (item.key().find(".memory.") == std::string::npos) continue;
    CAPTURE(item.key());
    REQUIRE(item.value().grad().defined());
    CHECK(item.value().grad().abs().sum().item<double>() > 0);
  }
  lm->eval();
  lm->forward(ids);
  CHECK_FALSE(lm->auxiliary_loss().defined());
}

TEST_CASE("stride boundaries put a candidate every K tokens", "[memory]") {
  memory::MemoryOptions options = dla_options();
  options.boundary = "stride:3";
  memory::DlaPolicyImpl policy(options, 16, 2);
  const at::Tensor u_BTH = policy.scores(at::randn({1, 8, 16}), {}, 0);
  const at::Tensor expected_T = at::tensor({0.f, 0.f, 0.f, 1.f, 0.f, 0.f, 1.f, 0.f});
  CHECK(at::equal(u_BTH.select(2, 1).squeeze(0), expected_T));
  // Decoding from position 5 continues the pattern.
  CHECK(
      at::equal(policy.scores(at::randn({1, 2, 16}), {}, 5).select(2, 0).squeeze(0), at::tensor({0.f, 1.f})));
}

TEST_CASE("memory parameters have fla-style names inside the layer", "[memory][checkpoint]") {
  const auto mixer = GENERATE(model::MixerKind::gdn, model::MixerKind::mamba2);
  const auto config = small_model_config(mixer, {"model.memory.policy=dla"});
  model::CausalLM lm(config.config.model);
  const std::string fla_layer =
      mixer == model::MixerKind::gdn ? "model.layers.1.attn." : "backbone.layers.1.mixer.";
  for (const std::string name : {"l_proj.weight", "L", "score_a_proj.weight", "score_b_proj.weight"}) {
    const std::string dla_name = "layers.1.mixer.memory." + name;
    CAPTURE(dla_name);
    CHECK(lm->named_parameters().contains(dla_name));
    CHECK(checkpoint::fla_name_from_dla(dla_name, mixer) == fla_layer + name);
    CHECK(checkpoint::dla_name_from_fla(fla_layer + name, mixer) == dla_name);
  }
  // λ has capacity + 1 levels per state head (GDN: 2 value heads; Mamba-2: 2·32/16 = 4 heads).
  const int64_t heads = mixer == model::MixerKind::gdn ? 2 : 4;
  CHECK(lm->named_parameters()["layers.0.mixer.memory.L"].sizes() == at::IntArrayRef({heads, 9}));
}

TEST_CASE("bad memory options are config errors naming the key", "[memory][config]") {
  for (const std::string boundary : {"stride:0", "stride:-2", "stride:2x", "entropy"}) {
    CAPTURE(boundary);
    CHECK_THROWS_WITH(small_model_config(model::MixerKind::gdn, {"model.memory.boundary=" + boundary}),
                      has_substr("model.memory.boundary") && has_substr("expected `info` or `stride:K`"));
  }
  CHECK_THROWS_WITH(small_model_config(model::MixerKind::gdn, {"model.memory.policy=hierarchical"}),
                    has_substr("model.memory.policy"));
  CHECK_THROWS_WITH(small_model_config(model::MixerKind::gdn, {"model.memory.capacity=0"}),
                    has_substr("model.memory.capacity"));
}

TEST_CASE("the fenwick memory refuses sequences longer than max_length", "[memory]") {
  memory::MemoryOptions options;
  options.policy = memory::PolicyKind::fenwick;
  options.max_length = 16;
  memory::FenwickPolicyImpl policy(options, 8, 1);
  const memory::Recurrence terms{at::randn({1, 17, 1, 4}),
                                 at::randn({1, 17, 1, 4}),
                                 at::randn({1, 17, 1, 4}),
                                 -at::rand({1, 17, 1}),
                                 at::Tensor(),
                                 1.0};
  CHECK_THROWS_WITH(policy.forward(at::randn({1, 17, 8}), terms, 16),
                    has_substr("at most model.memory.max_length = 16 tokens, got a sequence of 17"));
  // 16 tokens fit: λ has ceil(log2 16) + 1 = 5 levels.
  CHECK(policy.L.sizes() == at::IntArrayRef({1, 5}));
  const memory::Recurrence fits{terms.q_BTHK.narrow(1, 0, 16),
                                terms.k_BTHK.narrow(1, 0, 16),
                                terms.v_BTHV.narrow(1, 0, 16),
                                terms.g_BTH.narrow(1, 0, 16),
                                at::Tensor(),
                                1.0};
  CHECK(policy.forward(at::randn({1, 16, 8}), fits, 16).sizes() == at::IntArrayRef({1, 16, 1, 4}));
}

}  // namespace dla::test
