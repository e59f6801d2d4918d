// Tests of activation checkpointing: a checkpointed training forward and backward give the loss, auxiliary
// loss and every parameter gradient of the plain one, for both backbones and the memory policies (dla's has
// an auxiliary loss), and no-grad forwards are not checkpointed.
#include "dla/model/activation_checkpoint.h"

#include <cmath>
#include <string>
#include <vector>

#include <ATen/ops/randint.h>
#include <torch/utils.h>

#include "catch.h"
#include "dla/model/causal_lm.h"
#include "model/model_testing.h"
#include "ops/op_testing.h"

namespace {

using dla::model::CausalLM;

struct Case {
  dla::model::MixerKind mixer;
  dla::memory::PolicyKind policy;
};

dla::model::ModelOptions options_of(const Case& c) {
  return dla::test::tiny_model_options(c.mixer, c.policy);
}

struct StepResult {
  double loss = 0;
  double auxiliary = 0;
  std::vector<at::Tensor> grads;
};

StepResult train_step(const Case& c, bool checkpointing, const at::Tensor& ids) {
  torch::manual_seed(3);
  CausalLM model(options_of(c));
  model->train();
  model->set_activation_checkpointing(checkpointing);
  const at::Tensor loss = dla::model::next_token_loss(model->forward(ids), ids);
  const at::Tensor auxiliary = model->auxiliary_loss();
  (auxiliary.defined() ? loss + auxiliary : loss).backward();
  StepResult result{loss.item<double>(), auxiliary.defined() ? auxiliary.item<double>() : 0.0, {}};
  for (const auto& p : model->parameters())
    result.grads.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  return result;
}

}  // namespace

TEST_CASE("checkpointed blocks give the plain losses and parameter gradients",
          "[model][activation_checkpoint]") {
  using dla::memory::PolicyKind;
  using dla::model::MixerKind;
  const Case c =
      GENERATE(Case{MixerKind::gdn, PolicyKind::single}, Case{MixerKind::gdn, PolicyKind::dla},
               Case{MixerKind::mamba2, PolicyKind::fenwick}, Case{MixerKind::mamba2, PolicyKind::dla});
  CAPTURE(static_cast<int>(c.mixer), static_cast<int>(c.policy));
  const at::Tensor ids = at::randint(50, {2, 20}, at::make_generator<at::CPUGeneratorImpl>(9), at::kLong);
  const StepResult plain = train_step(c, false, ids);
  const StepResult checkpointed = train_step(c, true, ids);
  CHECK(std::abs(checkpointed.loss - plain.loss) <= 1e-6 * std::abs(plain.loss));
  CHECK(std::abs(checkpointed.auxiliary - plain.auxiliary) <= 1e-6 * std::abs(plain.auxiliary));
  if (c.policy == PolicyKind::dla) CHECK(plain.auxiliary > 0);
  REQUIRE(plain.grads.size() == checkpointed.grads.size());
  for (std::size_t i = 0; i < plain.grads.size(); ++i) {
    CAPTURE(i);
    dla::test::expect_close("parameter gradient", plain.grads[i], checkpointed.grads[i], 1e-5);
  }
}

TEST_CASE("no-grad forwards run the blocks plainly; training forwards return a differentiable auxiliary loss",
          "[model][activation_checkpoint]") {
  torch::manual_seed(3);
  CausalLM model(options_of({dla::model::MixerKind::gdn, dla::memory::PolicyKind::dla}));
  model->set_activation_checkpointing(true);
  model->train();
  const at::Tensor ids = at::randint(50, {1, 12}, at::make_generator<at::CPUGeneratorImpl>(2), at::kLong);
  at::Tensor no_grad_logits;
  {
    at::NoGradGuard no_grad;
    no_grad_logits = model->forward(ids);
  }
  CHECK_FALSE(no_grad_logits.requires_grad());
  const at::Tensor train_logits = model->forward(ids);
  REQUIRE(train_logits.requires_grad());
  dla::test::expect_close("logits", no_grad_logits, train_logits.detach(), 1e-6);
  REQUIRE(model->auxiliary_loss().defined());
  CHECK(model->auxiliary_loss().requires_grad());
}
