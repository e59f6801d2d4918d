// Tests of ops::to_head_major and ops::from_head_major: on the CPU the layouts and the gradients against the
// LibTorch ops, and on the GPU the kernel against those ops, exactly (it moves and converts entries, and sums
// and scales them in the ops' order), both ways, for each dtype, a last dim of vectors and of single entries,
// and a view that starts off the vector alignment.
#include "dla/ops/head_major.h"

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "catch.h"

namespace {

at::Tensor random(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::kDouble);
}

/// x's values, its gradient under the loss Σ y ⊙ weight, y = to_head_major(x, float32).
struct Pass {
  at::Tensor y, grad;
};

/// A random CUDA tensor of `shape` and `dtype`; with offset_view, a view that starts one entry into its
/// storage, off the 16-byte vectors the kernel moves.
at::Tensor gpu_random(const std::vector<int64_t>& shape, at::ScalarType dtype, uint64_t seed,
                      bool offset_view) {
  int64_t numel = 1;
  for (int64_t size : shape)
    numel *= size;
  const at::Tensor storage = random({numel + 1}, seed).to(at::kCUDA, dtype);
  return storage.narrow(0, offset_view ? 1 : 0, numel).view(shape);
}

/// shape with dims 1 and 2 swapped.
std::vector<int64_t> swapped(std::vector<int64_t> shape) {
  std::swap(shape[1], shape[2]);
  return shape;
}

Pass run(const at::Tensor& x_in, const at::Tensor& weight) {
  const at::Tensor x = x_in.detach().requires_grad_(true);
  const at::Tensor y = dla::ops::to_head_major(x, at::kFloat);
  (y * weight.to(y.device(), at::kFloat)).sum().backward();
  return {y.detach().cpu(), x.grad().cpu()};
}

}  // namespace

TEST_CASE("to_head_major swaps tokens and heads, converts, and sends the gradient back", "[ops]") {
  const at::Tensor x = random({2, 5, 3, 4}, 1).to(at::kBFloat16);
  const at::Tensor weight = random({2, 3, 5, 4}, 2);
  const Pass pass = run(x, weight);
  REQUIRE(pass.y.is_contiguous());
  REQUIRE(pass.y.scalar_type() == at::kFloat);
  REQUIRE(pass.y.sizes() == at::IntArrayRef({2, 3, 5, 4}));
  REQUIRE(at::equal(pass.y, x.movedim(1, 2).to(at::kFloat)));
  REQUIRE(pass.grad.scalar_type() == at::kBFloat16);
  REQUIRE(at::equal(pass.grad, weight.to(at::kFloat).movedim(1, 2).to(at::kBFloat16)));
  REQUIRE_THROWS_WITH(dla::ops::to_head_major(at::zeros({2, 3}), at::kFloat),
                      dla::test::has_substr("expected [B, T, H, ...]"));
}

TEST_CASE("on the GPU to_head_major's kernel equals LibTorch's copy, both ways", "[ops][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the head-major kernel is not exercised on this machine");
    return;
  }
  const at::ScalarType dtype = GENERATE(at::kBFloat16, at::kHalf, at::kFloat);
  // [B, T, H, E]: E a multiple of the kernel's vectors, E = 6 entry by entry, [B, T, H] (E = 1).
  const std::vector<int64_t> shape = GENERATE(
      std::vector<int64_t>{3, 37, 5, 128}, std::vector<int64_t>{2, 9, 4, 6}, std::vector<int64_t>{2, 33, 7});
  const bool offset_view = GENERATE(false, true);
  CAPTURE(dtype, shape, offset_view);
  const at::Tensor x = gpu_random(shape, dtype, 3, offset_view);
  REQUIRE(dla::ops::to_head_major_uses_cuda_kernel(x, at::kFloat));
  const at::Tensor weight = random(swapped(shape), 4);
  const Pass got = run(x, weight);
  const at::Tensor x_cpu = x.cpu();
  REQUIRE(at::equal(got.y, x_cpu.movedim(1, 2).to(at::kFloat)));
  REQUIRE(got.grad.scalar_type() == dtype);
  REQUIRE(at::equal(got.grad, weight.to(at::kFloat).movedim(1, 2).to(dtype)));
}

namespace {

/// The output of from_head_major(a, b, scale, dtype) and both inputs' gradients under the loss Σ y ⊙ weight.
struct SumPass {
  at::Tensor y, grad_a, grad_b;
};

SumPass run_sum(const at::Tensor& a_in, const at::Tensor& b_in, double scale, at::ScalarType dtype,
                const at::Tensor& weight, bool composed) {
  const at::Tensor a = a_in.detach().requires_grad_(true), b = b_in.detach().requires_grad_(true);
  const at::Tensor y =
      composed ? ((a + b) * scale).movedim(1, 2).to(dtype) : dla::ops::from_head_major(a, b, scale, dtype);
  (y.to(at::kFloat) * weight.to(y.device(), at::kFloat)).sum().backward();
  return {y.detach().cpu(), a.grad().cpu(), b.grad().cpu()};
}

}  // namespace

TEST_CASE("from_head_major sums, scales and swaps heads and tokens back, with both gradients", "[ops]") {
  const at::Tensor a = random({2, 3, 5, 4}, 5).to(at::kFloat), b = random({2, 3, 5, 4}, 6).to(at::kFloat);
  const at::Tensor weight = random({2, 5, 3, 4}, 7);
  const SumPass got = run_sum(a, b, 0.25, at::kBFloat16, weight, false);
  const SumPass want = run_sum(a, b, 0.25, at::kBFloat16, weight, true);
  REQUIRE(got.y.is_contiguous());
  REQUIRE(got.y.scalar_type() == at::kBFloat16);
  REQUIRE(got.y.sizes() == at::IntArrayRef({2, 5, 3, 4}));
  REQUIRE(at::equal(got.y, want.y));
  REQUIRE(at::equal(got.grad_a, want.grad_a));
  REQUIRE(at::equal(got.grad_b, want.grad_b));
  REQUIRE_THROWS_WITH(dla::ops::from_head_major(a, b.narrow(3, 0, 2), 1.0, at::kFloat),
                      dla::test::has_substr("two [B, H, T, ...] tensors of one shape"));
}

TEST_CASE("on the GPU from_head_major's kernel equals the LibTorch ops, both ways", "[ops][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the head-major kernel is not exercised on this machine");
    return;
  }
  const at::ScalarType dtype = GENERATE(at::kBFloat16, at::kHalf, at::kFloat);
  const std::vector<int64_t> shape =
      GENERATE(std::vector<int64_t>{3, 5, 37, 128}, std::vector<int64_t>{2, 4, 9, 6});
  const bool offset_view = GENERATE(false, true);
  CAPTURE(dtype, shape, offset_view);
  const at::Tensor a = gpu_random(shape, at::kFloat, 8, offset_view);
  const at::Tensor b = gpu_random(shape, at::kFloat, 9, false);
  REQUIRE(dla::ops::from_head_major_uses_cuda_kernel(a, b, dtype));
  const at::Tensor weight = random(swapped(shape), 10);
  const SumPass got = run_sum(a, b, 0.125, dtype, weight, false);
  const SumPass want = run_sum(a, b, 0.125, dtype, weight, true);
  REQUIRE(at::equal(got.y, want.y));
  REQUIRE(at::equal(got.grad_a, want.grad_a));
  REQUIRE(at::equal(got.grad_b, want.grad_b));
}
