// Helpers for the op tests (see op_testing.h).
// Shapes: B batch, T tokens, H heads, K key dim, V value dim.
#include "ops/op_testing.h"

#include <cstdlib>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/randn.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include "catch.h"

namespace dla::test {

CloseStats compare(const at::Tensor& ref, const at::Tensor& got) {
  const at::Tensor ref64 = ref.detach().to(at::kDouble);
  const at::Tensor diff = ref64 - got.detach().to(at::kDouble);
  const double diff_norm = diff.norm().item<double>();
  const double ref_norm = ref64.norm().item<double>();
  return {diff.abs().max().item<double>(), ref_norm > 0 ? diff_norm / ref_norm : diff_norm};
}

CloseStats expect_close(const std::string& name, const at::Tensor& ref, const at::Tensor& got, double tol) {
  INFO(name << ": ref " << ref.sizes() << " " << ref.scalar_type() << ", got " << got.sizes() << " "
            << got.scalar_type());
  REQUIRE(ref.sizes() == got.sizes());
  const CloseStats stats = compare(ref, got);
  // Catch prints doubles with fixed digits, which would show float64 errors as 0.
  INFO(fmt::format("{}: max abs diff {:.3e}, relative RMS error {:.3e}, tolerance {:.1e}", name,
                   stats.max_abs_diff, stats.rel_rms_error, tol));
  const double rel_rms_error = stats.rel_rms_error;
  CHECK(rel_rms_error <= tol);
  return stats;
}

OpInputs random_inputs(const OpSizes& sizes, bool with_initial_state, at::ScalarType dtype, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const std::vector<int64_t> shape_BTHK = {sizes.batch, sizes.tokens, sizes.heads, sizes.key_dim};
  const std::vector<int64_t> shape_BTHV = {sizes.batch, sizes.tokens, sizes.heads, sizes.value_dim};
  const std::vector<int64_t> shape_BTH = {sizes.batch, sizes.tokens, sizes.heads};
  const auto unit_rows = [](const at::Tensor& x) { return x / x.norm(2, {-1}, /*keepdim=*/true); };

  OpInputs inputs;
  inputs.q = unit_rows(at::randn(shape_BTHK, gen, f64)).to(dtype);
  inputs.k = unit_rows(at::randn(shape_BTHK, gen, f64)).to(dtype);
  inputs.v = at::randn(shape_BTHV, gen, f64).to(dtype);
  // Mostly near 0 (about -0.05 a token), so a state survives a chunk of 64 tokens.
  inputs.g = at::log_sigmoid(at::randn(shape_BTH, gen, f64) + 3).to(dtype);
  inputs.beta = at::randn(shape_BTH, gen, f64).sigmoid().to(dtype);
  if (with_initial_state) {
    inputs.initial_state =
        at::randn({sizes.batch, sizes.heads, sizes.key_dim, sizes.value_dim}, gen, f64).to(dtype);
  }
  return inputs;
}

at::Tensor random_weight(at::IntArrayRef shape, uint64_t seed) {
  return at::randn(shape, at::make_generator<at::CPUGeneratorImpl>(seed), at::kDouble);
}

std::vector<at::Tensor> op_gradients(const OpFunction& op, const std::vector<at::Tensor>& inputs,
                                     const at::Tensor& out_weight, const at::Tensor& state_weight) {
  std::vector<at::Tensor> leaves;
  for (const auto& x : inputs)
    leaves.push_back(x.defined() ? x.detach().clone().requires_grad_(true) : x);
  const ops::OpResult result = op(leaves);
  ((result.out * out_weight).sum() + (result.final_state * state_weight).sum()).backward();
  std::vector<at::Tensor> grads;
  for (const auto& leaf : leaves)
    grads.push_back(leaf.defined() ? leaf.grad() : leaf);
  return grads;
}

void expect_chunk_gradients_match(const ChunkedOpFunction& op, const std::vector<at::Tensor>& inputs,
                                  const std::vector<std::string>& names, int64_t chunk_size, double tol) {
  const at::Tensor out_weight = random_weight(op(inputs, 0).out.sizes(), /*seed=*/1);
  const at::Tensor state_weight = random_weight(op(inputs, 0).final_state.sizes(), /*seed=*/2);
  const auto gradients = [&](int64_t chunk) {
    return op_gradients([&](const std::vector<at::Tensor>& x) { return op(x, chunk); }, inputs, out_weight,
                        state_weight);
  };
  const std::vector<at::Tensor> ref = gradients(0);
  const std::vector<at::Tensor> got = gradients(chunk_size);
  for (std::size_t i = 0; i < names.size(); ++i) {
    INFO("d" << names[i]);
    REQUIRE(ref[i].defined());
    REQUIRE(got[i].defined());
    expect_close("d" + names[i], ref[i], got[i], tol);
  }
}

std::string c10_error_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& error) {
    return error.what_without_backtrace();
  }
  return "no c10::Error was thrown";
}

}  // namespace dla::test
