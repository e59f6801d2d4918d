// Tests of train::FusedAdamW against LibTorch's AdamW: the same parameters and moments after several steps,
// with and without weight decay, skipping parameters without a gradient, on the CPU and (where there is one)
// the GPU; and the fallback to LibTorch's step where the fused kernel does not apply.
#include "dla/train/fused_adamw.h"

#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "catch.h"

namespace {

using torch::optim::AdamWOptions;
using torch::optim::AdamWParamState;

/// Two groups (weight decay and none) of parameters drawn the same on every call; the last has no gradient.
std::vector<at::Tensor> draw_parameters(const at::Device& device, at::ScalarType dtype) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  std::vector<at::Tensor> params;
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{33, 4}, {2, 3, 5}, {7}, {9}, {4}})
    params.push_back(at::randn(shape, gen).to(device, dtype).requires_grad_());
  return params;
}

std::vector<torch::optim::OptimizerParamGroup> groups_of(const std::vector<at::Tensor>& params,
                                                         bool amsgrad) {
  const auto options = [&](double weight_decay) {
    return std::make_unique<AdamWOptions>(
        AdamWOptions(3e-2).betas({0.8, 0.95}).eps(1e-6).weight_decay(weight_decay).amsgrad(amsgrad));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>(params.begin(), params.begin() + 2), options(0.1));
  groups.emplace_back(std::vector<at::Tensor>(params.begin() + 2, params.end()), options(0.0));
  return groups;
}

/// Five steps with the same random gradients (none for the last parameter).
void run_steps(torch::optim::AdamW& optimizer, const std::vector<at::Tensor>& params) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
  for (int step = 0; step < 5; ++step) {
    for (std::size_t i = 0; i + 1 < params.size(); ++i)
      params[i].mutable_grad() = (at::randn(params[i].sizes(), gen) * (step + 1)).to(params[i].options());
    optimizer.step();
  }
}

}  // namespace

TEST_CASE("FusedAdamW gives LibTorch's AdamW parameters and state", "[train]") {
  const bool on_gpu = GENERATE(false, true);
  const bool amsgrad = GENERATE(false, true);
  if (on_gpu && !at::hasCUDA()) {
    WARN("no CUDA device: FusedAdamW is not exercised on the GPU on this machine");
    return;
  }
  CAPTURE(on_gpu, amsgrad);
  const at::Device device = on_gpu ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  const std::vector<at::Tensor> ref_params = draw_parameters(device, at::kFloat);
  const std::vector<at::Tensor> got_params = draw_parameters(device, at::kFloat);
  torch::optim::AdamW reference(groups_of(ref_params, amsgrad));
  dla::train::FusedAdamW fused(groups_of(got_params, amsgrad));
  run_steps(reference, ref_params);
  run_steps(fused, got_params);
  CHECK(fused.last_step_fused() == !amsgrad);
  for (std::size_t i = 0; i < ref_params.size(); ++i) {
    CAPTURE(i);
    CHECK(at::allclose(got_params[i], ref_params[i], /*rtol=*/1e-5, /*atol=*/1e-6));
    const auto ref_state = reference.state().find(ref_params[i].unsafeGetTensorImpl());
    const auto got_state = fused.state().find(got_params[i].unsafeGetTensorImpl());
    // The parameter without a gradient is never updated and gets no state.
    if (i + 1 == ref_params.size()) {
      CHECK(ref_state == reference.state().end());
      CHECK(got_state == fused.state().end());
      CHECK(at::equal(got_params[i], draw_parameters(device, at::kFloat)[i]));
      continue;
    }
    REQUIRE(got_state != fused.state().end());
    const auto& ref = static_cast<const AdamWParamState&>(*ref_state->second);
    const auto& got = static_cast<const AdamWParamState&>(*got_state->second);
    CHECK(got.step() == 5);
    CHECK(got.step() == ref.step());
    CHECK(at::allclose(got.exp_avg(), ref.exp_avg(), 1e-5, 1e-6));
    CHECK(at::allclose(got.exp_avg_sq(), ref.exp_avg_sq(), 1e-5, 1e-6));
  }
  // The update did move the parameters.
  CHECK_FALSE(at::allclose(got_params[0], draw_parameters(device, at::kFloat)[0]));
}

TEST_CASE("FusedAdamW falls back to LibTorch's step for float64 parameters", "[train]") {
  const std::vector<at::Tensor> ref_params = draw_parameters(at::kCPU, at::kDouble);
  const std::vector<at::Tensor> got_params = draw_parameters(at::kCPU, at::kDouble);
  torch::optim::AdamW reference(groups_of(ref_params, false));
  dla::train::FusedAdamW fused(groups_of(got_params, false));
  run_steps(reference, ref_params);
  run_steps(fused, got_params);
  CHECK_FALSE(fused.last_step_fused());
  for (std::size_t i = 0; i < ref_params.size(); ++i)
    CHECK(at::equal(got_params[i], ref_params[i]));
}
