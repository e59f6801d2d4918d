// Tests of ops::cross_entropy: known values, ignored rows and bad input on the CPU, and on the GPU the
// kernels against LibTorch's loss on float32 logits, value and gradient, for float32 and bfloat16 logits.
#include "dla/ops/cross_entropy.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "catch.h"
#include "dla/ops/kernels.h"
#include "ops/op_testing.h"

namespace {

using dla::test::expect_close;
using dla::test::KernelChoiceScope;

struct LossRun {
  at::Tensor loss, d_logits;  ///< float64 on the CPU
};

/// The loss and the gradient of 3 · loss with respect to the logits, under `choice`.
LossRun run_loss(const at::Tensor& logits, const at::Tensor& labels, dla::ops::KernelChoice choice) {
  const KernelChoiceScope scope(choice);
  const at::Tensor leaf = logits.detach().clone().requires_grad_(true);
  const at::Tensor loss = dla::ops::cross_entropy(leaf, labels);
  (3 * loss).backward();
  CHECK(leaf.grad().scalar_type() == logits.scalar_type());
  return {loss.detach().cpu().to(at::kDouble), leaf.grad().cpu().to(at::kDouble)};
}

}  // namespace

TEST_CASE("cross_entropy on the CPU: known values, ignored rows and bad input", "[ops]") {
  // Uniform logits over 4 classes: log 4 for every row; the ignored row counts in neither sum nor mean.
  const at::Tensor logits = at::zeros({3, 4}, at::kDouble);
  const at::Tensor labels = at::tensor({int64_t{2}, dla::ops::kIgnoreLabel, int64_t{0}}, at::kLong);
  CHECK(std::abs(dla::ops::cross_entropy(logits, labels).item<double>() - std::log(4.0)) < 1e-12);
  // A confident, right row costs log(1 + 3e⁻¹⁰); a wrong one about 10.
  const at::Tensor sharp = at::tensor({10.0, 0.0, 0.0, 0.0}, at::kDouble).unsqueeze(0);
  const double right = std::log1p(3 * std::exp(-10.0));
  CHECK(std::abs(dla::ops::cross_entropy(sharp, at::tensor({0}, at::kLong)).item<double>() - right) < 1e-12);
  CHECK(std::abs(dla::ops::cross_entropy(sharp, at::tensor({1}, at::kLong)).item<double>() - (10 + right)) <
        1e-12);
  CHECK_THROWS_WITH(dla::ops::cross_entropy(logits, at::tensor({0, 1}, at::kLong)),
                    dla::test::has_substr("expected logits [N, V] and labels [N]"));
  CHECK_THROWS_WITH(dla::ops::cross_entropy(logits, labels.to(at::kInt)),
                    dla::test::has_substr("labels must be int64"));
  CHECK_FALSE(dla::ops::cross_entropy_uses_cuda_kernel(logits.to(at::kFloat)));
}

TEST_CASE("on the GPU the cross-entropy kernels equal LibTorch's loss on float32 logits", "[ops][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the cross-entropy kernels are not exercised on this machine");
    return;
  }
  const auto dtype = GENERATE(at::kFloat, at::kBFloat16);
  // A vocabulary that does not fill the last pass of a block's threads, and large logits, which a
  // normaliser without the running maximum would overflow on.
  const int64_t rows = GENERATE(1, 37), vocab = GENERATE(8, 1000, 32000);
  CAPTURE(dtype, rows, vocab);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const at::Tensor logits = (at::randn({rows, vocab}, gen, at::kDouble) * 4 + 60).to(at::kCUDA, dtype);
  at::Tensor labels = at::randint(vocab, {rows}, gen, at::kLong);
  if (rows > 1) labels.index_put_({at::indexing::Slice(0, rows, 5)}, dla::ops::kIgnoreLabel);
  labels = labels.cuda();
  REQUIRE(dla::ops::cross_entropy_uses_cuda_kernel(logits));
  const LossRun ref = run_loss(logits, labels, dla::ops::KernelChoice::aten);
  const LossRun got = run_loss(logits, labels, dla::ops::KernelChoice::fused);
  // Both compute in float32 from the same logits; a bfloat16 gradient rounds to 2⁻⁹ relative.
  expect_close("loss", ref.loss, got.loss, 1e-5);
  expect_close("d_logits", ref.d_logits, got.d_logits, dtype == at::kFloat ? 1e-5 : 1e-2);
}

TEST_CASE("on the GPU a label outside the vocabulary makes the fused loss NaN", "[ops][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the cross-entropy kernels are not exercised on this machine");
    return;
  }
  const KernelChoiceScope scope(dla::ops::KernelChoice::fused);
  const at::Tensor logits = at::zeros({2, 16}, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));
  CHECK(std::isnan(dla::ops::cross_entropy(logits, at::tensor({3, 16}, at::kLong).cuda()).item<double>()));
}
