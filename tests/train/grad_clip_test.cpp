// Tests of train::clip_grad_norm against LibTorch's clip_grad_norm_: the same norm and the same clipped
// gradients, with and without clipping, skipping parameters that have no gradient.
#include "dla/train/grad_clip.h"

#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/utils/clip_grad.h>

#include "catch.h"

namespace {

/// Three parameters with gradients and one without, the same on every call.
std::vector<at::Tensor> parameters_with_gradients() {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(21);
  std::vector<at::Tensor> parameters;
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{3, 4}, {7}, {2, 2, 5}, {6}}) {
    parameters.push_back(at::randn(shape, gen).requires_grad_());
  }
  for (size_t i = 0; i < 3; ++i)
    parameters[i].mutable_grad() = at::randn(parameters[i].sizes(), gen) * 3;
  return parameters;
}

}  // namespace

TEST_CASE("clip_grad_norm gives torch's clip_grad_norm_ norm and gradients", "[train]") {
  const double max_norm = GENERATE(0.5, 1e6, 0.0);
  CAPTURE(max_norm);
  const std::vector<at::Tensor> expected = parameters_with_gradients();
  const double expected_norm =
      torch::nn::utils::clip_grad_norm_(expected, max_norm > 0 ? max_norm : INFINITY);
  const std::vector<at::Tensor> got = parameters_with_gradients();
  const at::Tensor norm = dla::train::clip_grad_norm(got, max_norm);
  CHECK(norm.dim() == 0);
  CHECK(std::abs(norm.item<double>() - expected_norm) <= 1e-6 * expected_norm);
  for (size_t i = 0; i < 3; ++i)
    CHECK(at::allclose(got[i].grad(), expected[i].grad(), 1e-6, 1e-7));
  CHECK_FALSE(got[3].grad().defined());
  // 0.5 clips (the norm is about 15); the others leave the gradients as they were.
  const std::vector<at::Tensor> untouched = parameters_with_gradients();
  CHECK(at::equal(got[0].grad(), untouched[0].grad()) == (max_norm != 0.5));
}

TEST_CASE("clip_grad_norm of parameters without gradients is 0", "[train]") {
  const std::vector<at::Tensor> parameters{at::zeros({3}).requires_grad_()};
  CHECK(dla::train::clip_grad_norm(parameters, 1.0).item<double>() == 0.0);
}
