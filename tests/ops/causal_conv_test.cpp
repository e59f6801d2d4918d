// Tests of ops::causal_conv1d_silu: the LibTorch-op path against the defining sum (CPU, float64), causality,
// bad shapes, and on the GPU the kernels against that path, values and every gradient, for both dtypes,
// strided inputs and each width the models use.
#include "dla/ops/causal_conv.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "catch.h"
#include "ops/op_testing.h"

namespace {

using dla::test::expect_close;

/// silu(bias + Σ_j weight[c, j] · x[t − (W − 1) + j]) written out token by token.
at::Tensor causal_conv_by_definition(const at::Tensor& x_BTC, const at::Tensor& weight_CW,
                                     const at::Tensor& bias_C) {
  const int64_t T = x_BTC.size(1), W = weight_CW.size(1);
  at::Tensor pre_BTC = bias_C.defined() ? bias_C.expand_as(x_BTC).clone() : at::zeros_like(x_BTC);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < W; ++j) {
      const int64_t source = t - (W - 1) + j;
      if (source >= 0) pre_BTC.select(1, t).add_(x_BTC.select(1, source) * weight_CW.select(1, j));
    }
  }
  return at::silu(pre_BTC);
}

}  // namespace

TEST_CASE("causal_conv1d_silu on the CPU: the defining sum, causality and bad shapes", "[ops]") {
  const int64_t width = GENERATE(1, 2, 4);
  const bool with_bias = GENERATE(true, false);
  CAPTURE(width, with_bias);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor x = at::randn({2, 11, 5}, gen, at::kDouble);
  const at::Tensor weight = at::randn({5, width}, gen, at::kDouble);
  const at::Tensor bias = with_bias ? at::randn({5}, gen, at::kDouble) : at::Tensor();
  const at::Tensor y = dla::ops::causal_conv1d_silu(x, weight, bias);
  REQUIRE(y.sizes() == x.sizes());
  expect_close("y", causal_conv_by_definition(x, weight, bias), y, 1e-12);
  // Changing token 6 leaves the outputs before it as they were and changes those it reaches.
  const at::Tensor x_changed = x.clone();
  x_changed.select(1, 6).add_(1.0);
  const at::Tensor y_changed = dla::ops::causal_conv1d_silu(x_changed, weight, bias);
  CHECK(at::equal(y.narrow(1, 0, 6), y_changed.narrow(1, 0, 6)));
  CHECK_FALSE(at::allclose(y.select(1, 6), y_changed.select(1, 6)));
  CHECK_FALSE(dla::ops::causal_conv_uses_cuda_kernel(x.to(at::kFloat), weight.to(at::kFloat), bias));
}

TEST_CASE("causal_conv1d_silu rejects shapes that do not match", "[ops]") {
  const at::Tensor x = at::zeros({2, 3, 4});
  CHECK_THROWS_WITH(dla::ops::causal_conv1d_silu(x.flatten(0, 1), at::zeros({4, 2}), at::Tensor()),
                    dla::test::has_substr("x must be [B, T, C]"));
  CHECK_THROWS_WITH(dla::ops::causal_conv1d_silu(x, at::zeros({3, 2}), at::Tensor()),
                    dla::test::has_substr("weight must be [C, W] with C = 4"));
  CHECK_THROWS_WITH(dla::ops::causal_conv1d_silu(x, at::zeros({4, 2}), at::zeros({5})),
                    dla::test::has_substr("bias must be [C] with C = 4"));
}

namespace {

struct ConvRun {
  at::Tensor y, dx, dweight, dbias;
};

/// The op on the GPU with the kernels or LibTorch ops; x is the first C channels of a wider tensor when
/// `strided`, as Mamba-2 hands it a slice of its input projection.
ConvRun run_conv(const at::Tensor& x64, const at::Tensor& weight64, const at::Tensor& bias64,
                 const at::Tensor& dy64, at::ScalarType dtype, bool strided, bool fused) {
  const dla::test::KernelChoiceScope choice(fused ? dla::ops::KernelChoice::automatic
                                                  : dla::ops::KernelChoice::aten);
  const int64_t C = x64.size(2);
  const at::Tensor wide = at::cat({x64, x64.narrow(2, 0, 3)}, 2).to(at::kCUDA, dtype).requires_grad_();
  const at::Tensor x = strided ? wide.narrow(2, 0, C) : wide.narrow(2, 0, C).contiguous();
  const at::Tensor weight = weight64.to(at::kCUDA, at::kFloat).requires_grad_();
  const at::Tensor bias = bias64.defined() ? bias64.to(at::kCUDA, at::kFloat).requires_grad_() : at::Tensor();
  CHECK(dla::ops::causal_conv_uses_cuda_kernel(x, weight, bias) == fused);
  const at::Tensor y = dla::ops::causal_conv1d_silu(x, weight, bias);
  REQUIRE(y.scalar_type() == dtype);
  (y.to(at::kDouble) * dy64.to(at::kCUDA)).sum().backward();
  return {y.detach(), wide.grad().narrow(2, 0, C), weight.grad(),
          bias.defined() ? bias.grad() : at::Tensor()};
}

}  // namespace

TEST_CASE("on the GPU the causal convolution kernels equal the LibTorch-op path", "[ops][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the causal convolution kernels are not exercised on this machine");
    return;
  }
  const int64_t width = GENERATE(1, 2, 4);
  const bool with_bias = GENERATE(true, false);
  const bool strided = GENERATE(true, false);
  const auto dtype = GENERATE(at::kFloat, at::kBFloat16);
  CAPTURE(width, with_bias, strided, dtype);
  // Token blocks of 64 and channel blocks of 128 that the sizes do not fill.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const at::Tensor x64 = at::randn({3, 150, 200}, gen, at::kDouble);
  const at::Tensor weight64 = at::randn({200, width}, gen, at::kDouble) * 0.5;
  const at::Tensor bias64 = with_bias ? at::randn({200}, gen, at::kDouble) * 0.1 : at::Tensor();
  const at::Tensor dy64 = at::randn({3, 150, 200}, gen, at::kDouble);
  const ConvRun ref = run_conv(x64, weight64, bias64, dy64, dtype, strided, /*fused=*/false);
  const ConvRun got = run_conv(x64, weight64, bias64, dy64, dtype, strided, /*fused=*/true);
  // bfloat16 outputs and gradients may round the other way (2⁻⁸), and LibTorch's bfloat16 convolution sums
  // in lower precision than the kernels' float32.
  const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
  expect_close("y", ref.y, got.y, tol);
  expect_close("dx", ref.dx, got.dx, tol);
  expect_close("dweight", ref.dweight, got.dweight, tol);
  if (with_bias) expect_close("dbias", ref.dbias, got.dbias, tol);
}
