// Tests of ops::rms_norm: known values and invariances of the LibTorch-op path (CPU, float64), and on the GPU
// the fused kernels against that path, values and every gradient, for each mode and dtype pair the models
// use.
#include "dla/ops/rms_norm.h"

#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "catch.h"
#include "dla/ops/kernels.h"
#include "ops/op_testing.h"

namespace {

using dla::ops::RmsNormOptions;
using dla::test::expect_close;

at::Tensor row(std::initializer_list<double> values) {
  return at::tensor(std::vector<double>(values), at::kDouble).unsqueeze(0);
}

}  // namespace

TEST_CASE("rms_norm on the CPU: known values, groups and the gates", "[ops]") {
  const at::Tensor x = row({3, 4, 6, 8});
  const at::Tensor none;
  // L2: each group of two becomes [0.6, 0.8].
  CHECK(at::allclose(dla::ops::rms_norm(x, none, none, {.eps = 0, .group_size = 2, .mean = false}),
                     row({0.6, 0.8, 0.6, 0.8})));
  // RMS over the whole row, then the weight: mean(x²) = 31.25.
  const at::Tensor weight = at::tensor({2.0, 1.0, 1.0, 0.5}, at::kDouble);
  const double r = 1 / std::sqrt(31.25);
  CHECK(at::allclose(dla::ops::rms_norm(x, weight, none, {.eps = 0}), row({6 * r, 4 * r, 6 * r, 4 * r})));
  // A gate after the norm multiplies by silu(z): silu(0) = 0 clears the output.
  CHECK(at::allclose(dla::ops::rms_norm(x, weight, at::zeros_like(x), {.eps = 0}), at::zeros_like(x)));
  // A constant gate before the norm cancels out (without eps the norm is scale-invariant).
  const at::Tensor z = at::full_like(x, 3.0);
  CHECK(at::allclose(dla::ops::rms_norm(x, weight, z, {.eps = 0, .gate_before_norm = true}),
                     dla::ops::rms_norm(x, weight, none, {.eps = 0})));
  // The output keeps x's dtype.
  CHECK(dla::ops::rms_norm(x.to(at::kFloat), weight.to(at::kFloat), none, {}).scalar_type() == at::kFloat);
  CHECK_THROWS_WITH(dla::ops::rms_norm(x, none, none, {.group_size = 3}),
                    dla::test::has_substr("not a multiple of the group size 3"));
  CHECK_FALSE(dla::ops::rms_norm_uses_cuda_kernel(x.to(at::kFloat), none, none, {}));
}

namespace {

struct NormCase {
  std::string name;
  std::vector<int64_t> shape;  ///< of x; the last dim is D
  RmsNormOptions options;
  bool weight, gate;
};

struct NormRun {
  at::Tensor y, dx, dweight, dz;
};

NormRun run_norm(const NormCase& c, const at::Tensor& x64, const at::Tensor& weight64, const at::Tensor& z64,
                 const at::Tensor& dy64, at::ScalarType x_dtype, at::ScalarType z_dtype, bool fused) {
  const dla::test::KernelChoiceScope choice(fused ? dla::ops::KernelChoice::automatic
                                                  : dla::ops::KernelChoice::aten);
  const at::Tensor x = x64.to(at::kCUDA, x_dtype).requires_grad_();
  const at::Tensor weight = c.weight ? weight64.to(at::kCUDA, at::kFloat).requires_grad_() : at::Tensor();
  const at::Tensor z = c.gate ? z64.to(at::kCUDA, z_dtype).requires_grad_() : at::Tensor();
  CHECK(dla::ops::rms_norm_uses_cuda_kernel(x, weight, z, c.options) == fused);
  const at::Tensor y = dla::ops::rms_norm(x, weight, z, c.options);
  REQUIRE(y.scalar_type() == x_dtype);
  (y.to(at::kDouble) * dy64.to(at::kCUDA)).sum().backward();
  return {y.detach(), x.grad(), c.weight ? weight.grad() : at::Tensor(), c.gate ? z.grad() : at::Tensor()};
}

}  // namespace

TEST_CASE("on the GPU the fused norm kernels equal the LibTorch-op path", "[ops][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the fused norm kernels are not exercised on this machine");
    return;
  }
  // Rows that do not fill the last block; groups that are not a multiple of the warp size.
  const NormCase c =
      GENERATE(NormCase{"RMSNorm", {3, 37, 1024}, {.eps = 1e-5}, true, false},
               NormCase{"L2 per head", {2, 9, 4, 128}, {.eps = 1e-6, .mean = false}, false, false},
               NormCase{"gated after (GDN)", {2, 9, 4, 128}, {.eps = 1e-5}, true, true},
               NormCase{"gated before, groups (Mamba-2)",
                        {2, 9, 96},
                        {.eps = 1e-5, .group_size = 48, .gate_before_norm = true},
                        true,
                        true});
  const auto dtypes = GENERATE(std::pair{at::kFloat, at::kFloat}, std::pair{at::kBFloat16, at::kBFloat16},
                               std::pair{at::kFloat, at::kBFloat16});
  CAPTURE(c.name, c.shape, dtypes.first, dtypes.second);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor x64 = at::randn(c.shape, gen, at::kDouble);
  const at::Tensor z64 = at::randn(c.shape, gen, at::kDouble) * 2;
  const at::Tensor weight64 = 1 + 0.2 * at::randn({c.shape.back()}, gen, at::kDouble);
  const at::Tensor dy64 = at::randn(c.shape, gen, at::kDouble);
  const NormRun ref = run_norm(c, x64, weight64, z64, dy64, dtypes.first, dtypes.second, /*fused=*/false);
  const NormRun got = run_norm(c, x64, weight64, z64, dy64, dtypes.first, dtypes.second, /*fused=*/true);
  // bfloat16 outputs and gradients may round the other way: one unit in the last place is 2⁻⁸.
  const double tol = dtypes.first == at::kFloat && dtypes.second == at::kFloat ? 1e-5 : 1e-2;
  expect_close("y", ref.y, got.y, tol);
  expect_close("dx", ref.dx, got.dx, tol);
  if (c.weight) expect_close("dweight", ref.dweight, got.dweight, tol);
  if (c.gate) expect_close("dz", ref.dz, got.dz, tol);
}
