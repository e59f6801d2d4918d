// Tests of model::project_together: the stacked GEMM equals the layers applied one by one, in values and in
// the gradients of the input and every weight, and it refuses layers it cannot stack.
#include "dla/model/projections.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/nn/modules/linear.h>

#include "catch.h"
#include "ops/op_testing.h"

namespace {

torch::nn::Linear bias_free(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

}  // namespace

TEST_CASE("project_together equals the layers one by one, values and gradients", "[model]") {
  torch::manual_seed(4);
  std::vector<torch::nn::Linear> layers = {bias_free(6, 5), bias_free(6, 1), bias_free(6, 3)};
  for (auto& layer : layers)
    layer->to(at::kDouble);
  const at::Tensor x = at::randn({2, 7, 6}, at::kDouble).requires_grad_(true);
  const at::Tensor weights = at::randn({2, 7, 9}, at::kDouble);

  const std::vector<at::Tensor> together = dla::model::project_together(x, layers);
  REQUIRE(together.size() == layers.size());
  at::Tensor loss_together = at::zeros({}, at::kDouble), loss_apart = at::zeros({}, at::kDouble);
  int64_t column = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const at::Tensor apart = layers[i]->forward(x);
    dla::test::expect_close("output " + std::to_string(i), apart, together[i], 1e-12);
    const at::Tensor w = weights.narrow(-1, column, apart.size(-1));
    column += apart.size(-1);
    loss_together = loss_together + (together[i] * w).sum();
    loss_apart = loss_apart + (apart * w).sum();
  }
  std::vector<at::Tensor> leaves = {x};
  for (const auto& layer : layers)
    leaves.push_back(layer->weight);
  const auto grads_together = torch::autograd::grad({loss_together}, leaves);
  const auto grads_apart = torch::autograd::grad({loss_apart}, leaves);
  for (std::size_t i = 0; i < leaves.size(); ++i)
    dla::test::expect_close("gradient " + std::to_string(i), grads_apart[i], grads_together[i], 1e-12);
}

TEST_CASE("project_together refuses a layer with a bias or another input width", "[model]") {
  const at::Tensor x = at::randn({3, 4});
  CHECK_THROWS_WITH(dla::model::project_together(x, {torch::nn::Linear(4, 2)}),
                    dla::test::has_substr("must be bias-free"));
  CHECK_THROWS_WITH(dla::model::project_together(x, {bias_free(4, 2), bias_free(5, 2)}),
                    dla::test::has_substr("a layer takes 5 inputs, x has 4"));
}
