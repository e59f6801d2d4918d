// Tests of the DLA boundary scan's CUDA kernel (src/memory/boundary_scan.cu) against the host scan, entry by
// entry: both are exact integer tables, so they must be equal, ties in the scores included.
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "catch.h"
#include "dla/memory/segments.h"
#include "dla/ops/kernels.h"
#include "ops/op_testing.h"

namespace {

using dla::memory::BoundaryOptions;
using dla::memory::MergeRule;
using dla::memory::SegmentTable;

/// Scores in steps of 1/8, so that many are equal and the tie rule of MergeRule::lowest matters.
at::Tensor tied_scores(int64_t batch, int64_t tokens, int64_t heads, at::Generator& gen) {
  return at::randint(9, {batch, tokens, heads}, gen, at::kFloat) / 8;
}

void expect_same_tables(const at::Tensor& u_BTH, const BoundaryOptions& options) {
  const SegmentTable host = dla::memory::dla_segments(u_BTH, options);
  const SegmentTable gpu = dla::memory::dla_segments(u_BTH.to(at::kCUDA), options);
  REQUIRE(gpu.start_BHQS.is_cuda());
  CHECK(at::equal(gpu.start_BHQS.cpu(), host.start_BHQS));
  CHECK(at::equal(gpu.opener_BHQS.cpu(), host.opener_BHQS));
}

}  // namespace

TEST_CASE("dla_segments rejects scores that are not float32 [B, T, H] and a capacity below 1", "[memory]") {
  const at::Tensor u_BTH = at::full({2, 5, 3}, 0.7);
  CHECK_THROWS_WITH(dla::memory::dla_segments(u_BTH.to(at::kDouble), {}),
                    dla::test::has_substr("u must be float32 [B, T, H]"));
  CHECK_THROWS_WITH(dla::memory::dla_segments(u_BTH.flatten(1), {}), dla::test::has_substr("[B, T, H]"));
  CHECK_THROWS_WITH(dla::memory::dla_segments(u_BTH, {.capacity = 0}),
                    dla::test::has_substr("capacity must be >= 1"));
  CHECK_FALSE(dla::memory::boundary_scan_uses_cuda_kernel(u_BTH, {}));
}

TEST_CASE("on the GPU the boundary-scan kernel writes the host scan's tables", "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the boundary-scan kernel is not exercised on this machine");
    return;
  }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const auto merge = GENERATE(MergeRule::lowest, MergeRule::oldest);
  const int64_t capacity = GENERATE(1, 2, 3, 8, 16, 31, 32);
  const double threshold = GENERATE(0.5, 0.0, 1.5);  // some, every and no token a candidate
  CAPTURE(static_cast<int>(merge), capacity, threshold);
  const BoundaryOptions options{.capacity = capacity, .threshold = threshold, .merge = merge};
  REQUIRE(dla::memory::boundary_scan_uses_cuda_kernel(at::zeros({1, 1, 1}, at::kCUDA), options));
  // Longer sequences are scanned in pieces by separate warps (several from 300 tokens on).
  for (const int64_t tokens : {1, 31, 33, 300, 1000}) {
    CAPTURE(tokens);
    expect_same_tables(tied_scores(3, tokens, 5, gen), options);
  }
}

TEST_CASE(
    "on the GPU the boundary-scan kernel handles a training-sized batch and falls back outside its range",
    "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the boundary-scan kernel is not exercised on this machine");
    return;
  }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  expect_same_tables(at::rand({4, 2048, 8}, gen), {.capacity = 8, .threshold = 0.5});

  const at::Tensor u_BTH = tied_scores(2, 100, 3, gen).to(at::kCUDA);
  const BoundaryOptions too_many_slots{.capacity = 33, .threshold = 0.5};
  CHECK_FALSE(dla::memory::boundary_scan_uses_cuda_kernel(u_BTH, too_many_slots));
  expect_same_tables(u_BTH.cpu(), too_many_slots);
  CHECK(dla::memory::boundary_scan_uses_cuda_kernel(u_BTH, {}));
  const dla::test::KernelChoiceScope forced(dla::ops::KernelChoice::aten);
  CHECK_FALSE(dla::memory::boundary_scan_uses_cuda_kernel(u_BTH, {}));
}
