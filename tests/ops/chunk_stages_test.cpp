// Tests of the fused op's per-chunk CUDA kernels (prepare_chunks, chunk_outputs) against the LibTorch
// stages in float64 on the CPU, and of when they apply. The whole op through them (forward and backward)
// is tested against the float64 CPU op in fused_test.cpp, from bfloat16 inputs.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, M chunks, C chunk length.
#include <cmath>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros_like.h>

#include "catch.h"
#include "dla/ops/common.h"
#include "dla/ops/fused.h"
#include "dla/ops/gdn.h"
#include "dla/ops/tf32_scope.h"
#include "ops/op_testing.h"

namespace {

using dla::test::expect_close;
using dla::test::OpSizes;

// TF32 operands round to 2^-11 relative; the products sum K or C of them and the output runs through a
// (K + C)-deep product: 5e-3 relative RMS leaves a margin of ten over the 1e-4..5e-4 such sums give.
constexpr double kTf32Tolerance = 5e-3;

struct StageCase {
  OpSizes sizes;
  int64_t chunk_size;
};

/// The inputs on the GPU in `dtype`, k and v as strided views (k a slice of a wider tensor, v with its
/// tokens and heads swapped in memory) when `strided`, so the kernels read them in place.
std::vector<at::Tensor> on_gpu(const dla::test::OpInputs& in, at::ScalarType dtype, bool strided) {
  at::Tensor k = in.k.to(at::kCUDA, dtype), v = in.v.to(at::kCUDA, dtype);
  if (strided) {
    k = at::cat({k, at::zeros_like(k)}, -1).narrow(-1, 0, in.k.size(-1));
    v = v.transpose(1, 2).contiguous().transpose(1, 2);
  }
  return {in.q.to(at::kCUDA, dtype), k, v, in.g.to(at::kCUDA, at::kFloat), in.beta.to(at::kCUDA, at::kFloat)};
}

}  // namespace

TEST_CASE("the per-chunk kernels apply only on the GPU, under TF32, to dims they tile",
          "[ops][fused][cuda]") {
  const dla::test::OpInputs in = dla::test::random_inputs(
      {.batch = 1, .tokens = 70, .heads = 2, .key_dim = 64, .value_dim = 48}, false, at::kFloat, 7);
  {
    const dla::ops::Tf32Scope tf32(true);
    CHECK_FALSE(dla::ops::fused::chunk_stages_apply(in.q, in.k, in.v, at::kFloat, 64));
    CHECK_FALSE(dla::ops::fused::chunk_gradients_apply(in.q, in.k, in.v, at::kFloat, 64));
  }
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the per-chunk kernels are not exercised on this machine");
    return;
  }
  const at::Tensor q = in.q.cuda(), k = in.k.cuda(), v = in.v.cuda();
  CHECK_FALSE(dla::ops::fused::chunk_stages_apply(q, k, v, at::kFloat, 64));  // no TF32 allowed
  const dla::ops::Tf32Scope tf32(true);
  CHECK(dla::ops::fused::chunk_stages_apply(q, k, v, at::kFloat, 64));
  CHECK(dla::ops::fused::chunk_stages_apply(q.to(at::kBFloat16), k.to(at::kBFloat16), v.to(at::kBFloat16),
                                            at::kFloat, 32));
  CHECK_FALSE(dla::ops::fused::chunk_stages_apply(q, k, v, at::kDouble, 64));
  CHECK_FALSE(dla::ops::fused::chunk_stages_apply(q, k, v, at::kFloat, 8));    // C not a whole tile
  CHECK_FALSE(dla::ops::fused::chunk_stages_apply(q, k, v, at::kFloat, 128));  // C over 64
  CHECK_FALSE(dla::ops::fused::chunk_stages_apply(q, k, v.narrow(-1, 0, 40), at::kFloat, 64));  // V = 40
  CHECK_FALSE(dla::ops::fused::chunk_stages_apply(q, k, v.to(at::kBFloat16), at::kFloat, 64));  // mixed
  // The backward's kernels take K up to 128.
  CHECK(dla::ops::fused::chunk_gradients_apply(q, k, v, at::kFloat, 64));
  const at::Tensor q256 = at::cat({q, q, q, q}, -1), k256 = at::cat({k, k, k, k}, -1);
  CHECK(dla::ops::fused::chunk_stages_apply(q256, k256, v, at::kFloat, 64));
  CHECK_FALSE(dla::ops::fused::chunk_gradients_apply(q256, k256, v, at::kFloat, 64));
}

TEST_CASE("on the GPU the per-chunk kernels equal the LibTorch chunk stages in float64",
          "[ops][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the per-chunk kernels are not exercised on this machine");
    return;
  }
  // T = 200 ends in a partial chunk; (1, 128, 4, 128, 128) is a model's head shape; the third case has
  // C = 32 and the largest K.
  const StageCase c =
      GENERATE(StageCase{{.batch = 2, .tokens = 200, .heads = 3, .key_dim = 64, .value_dim = 96}, 64},
               StageCase{{.batch = 1, .tokens = 128, .heads = 4, .key_dim = 128, .value_dim = 128}, 64},
               StageCase{{.batch = 2, .tokens = 40, .heads = 1, .key_dim = 256, .value_dim = 32}, 32});
  const bool delta_rule = GENERATE(true, false);
  const auto dtype = GENERATE(at::kFloat, at::kBFloat16);
  const bool strided = GENERATE(false, true);
  CAPTURE(c.sizes.tokens, c.sizes.key_dim, c.sizes.value_dim, c.chunk_size, delta_rule, dtype, strided);
  const int64_t C = c.chunk_size;
  const dla::test::OpInputs in = dla::test::random_inputs(c.sizes, false, at::kDouble, 17);
  const std::vector<at::Tensor> gpu = on_gpu(in, dtype, strided);
  // The reference sees the numbers the kernels see: the inputs rounded to `dtype` once.
  const auto rounded = [&](const at::Tensor& x) { return x.to(dtype).to(at::kDouble); };
  const at::Tensor q = rounded(in.q), k = rounded(in.k), v = rounded(in.v), g = in.g, beta = in.beta;
  const at::Tensor beta_or_none = delta_rule ? gpu[4] : at::Tensor();

  const dla::ops::Tf32Scope tf32(true);
  REQUIRE(dla::ops::fused::chunk_stages_apply(gpu[0], gpu[1], gpu[2], at::kFloat, C));
  const dla::ops::fused::PreparedChunks got =
      dla::ops::fused::prepare_chunks(gpu[1], gpu[2], gpu[3], beta_or_none, C);
  CHECK_FALSE(got.k_to_end_bf16_BHMCK.defined());
  // Without the written values and with bf16 copies (the multi-state forms' call) the other terms are the
  // same numbers, and the copies are them rounded to bf16.
  const dla::ops::fused::PreparedChunks without_u = dla::ops::fused::prepare_chunks(
      gpu[1], gpu[2], gpu[3], beta_or_none, C, {.written_values = false, .bf16_copies = true});
  CHECK_FALSE(without_u.u_BHMCV.defined());
  CHECK(at::equal(without_u.k_to_end_bf16_BHMCK, got.k_to_end_BHMCK.to(at::kBFloat16)));
  CHECK(without_u.w_bf16_BHMCK.defined() == delta_rule);
  CHECK(without_u.inverse_bf16_BHMCC.defined() == delta_rule);
  CHECK(at::equal(without_u.gamma_BHMC, got.gamma_BHMC));
  CHECK(at::equal(without_u.k_to_end_BHMCK, got.k_to_end_BHMCK));
  CHECK(at::equal(without_u.chunk_decay_BHM, got.chunk_decay_BHM));
  if (delta_rule) {
    CHECK(at::equal(without_u.w_BHMCK, got.w_BHMCK));
    CHECK(at::equal(without_u.inverse_BHMCC, got.inverse_BHMCC));
    CHECK(at::equal(without_u.w_bf16_BHMCK, got.w_BHMCK.to(at::kBFloat16)));
    CHECK(at::equal(without_u.inverse_bf16_BHMCC, got.inverse_BHMCC.to(at::kBFloat16)));
    // With bf16 state operands (the single-state op's call for the bf16 state pass) k_to_end and w are the
    // same numbers rounded to bf16, and no float32 copy of them is made.
    const dla::ops::fused::PreparedChunks bf16_state = dla::ops::fused::prepare_chunks(
        gpu[1], gpu[2], gpu[3], beta_or_none, C, {.inverse = got.inverse_BHMCC, .bf16_state_operands = true});
    CHECK(bf16_state.k_to_end_BHMCK.scalar_type() == at::kBFloat16);
    CHECK(at::equal(bf16_state.k_to_end_BHMCK, got.k_to_end_BHMCK.to(at::kBFloat16)));
    CHECK(at::equal(bf16_state.w_BHMCK, got.w_BHMCK.to(at::kBFloat16)));
    CHECK(at::equal(bf16_state.u_BHMCV, got.u_BHMCV));
    CHECK_FALSE(bf16_state.k_to_end_bf16_BHMCK.defined());
    CHECK_THROWS(dla::ops::fused::prepare_chunks(gpu[1], gpu[2], gpu[3], beta_or_none, C,
                                                 {.bf16_copies = true, .bf16_state_operands = true}));
    // From a known T (the single-state backward's call, with the forward's T) the kernel reads T instead of
    // forming it: every term is the same number, and T is the tensor given.
    const dla::ops::fused::PreparedChunks from_inverse = dla::ops::fused::prepare_chunks(
        gpu[1], gpu[2], gpu[3], beta_or_none, C, {.written_values = false, .inverse = got.inverse_BHMCC});
    CHECK(from_inverse.inverse_BHMCC.is_same(got.inverse_BHMCC));
    CHECK(at::equal(from_inverse.gamma_BHMC, got.gamma_BHMC));
    CHECK(at::equal(from_inverse.k_to_end_BHMCK, got.k_to_end_BHMCK));
    CHECK(at::equal(from_inverse.chunk_decay_BHM, got.chunk_decay_BHM));
    CHECK(at::equal(from_inverse.w_BHMCK, got.w_BHMCK));
    // A T that is not of these inputs' shape is refused, not read out of bounds.
    CHECK_THROWS(
        dla::ops::fused::prepare_chunks(gpu[1], gpu[2], gpu[3], beta_or_none, C,
                                        {.inverse = got.inverse_BHMCC.narrow(2, 0, 1).contiguous()}));
  }

  namespace common = dla::ops::common;
  const at::Tensor k_BHMCK = common::to_chunks(k, C, at::kDouble);
  const at::Tensor v_BHMCV = common::to_chunks(v, C, at::kDouble);
  const at::Tensor gamma_BHMC = common::cumsum_gates(common::to_chunks(g, C, at::kDouble));
  const at::Tensor decay_BHMCC = common::decay_matrix(gamma_BHMC);
  const at::Tensor gamma_last_BHM = gamma_BHMC.select(-1, -1);
  expect_close("gamma", gamma_BHMC, got.gamma_BHMC.cpu().to(at::kDouble), 1e-6);
  expect_close("chunk_decay", gamma_last_BHM.exp(), got.chunk_decay_BHM.cpu().to(at::kDouble), 1e-6);
  expect_close("k_to_end", k_BHMCK * (gamma_last_BHM.unsqueeze(-1) - gamma_BHMC).exp().unsqueeze(-1),
               got.k_to_end_BHMCK.cpu().to(at::kDouble), 1e-6);
  if (delta_rule) {
    const at::Tensor beta_BHMC = common::to_chunks(beta, C, at::kDouble);
    const at::Tensor a_BHMCC =
        (beta_BHMC.unsqueeze(-1) * k_BHMCK.matmul(k_BHMCK.transpose(-1, -2)) * decay_BHMCC).tril(-1);
    expect_close("inverse", dla::ops::fused::unit_lower_inverse(a_BHMCC),
                 got.inverse_BHMCC.cpu().to(at::kDouble), kTf32Tolerance);
    const dla::ops::gdn::WyRepr wy =
        dla::ops::gdn::wy_repr(k_BHMCK, v_BHMCV, beta_BHMC, gamma_BHMC, decay_BHMCC);
    expect_close("w", wy.w_BHMCK, got.w_BHMCK.cpu().to(at::kDouble), kTf32Tolerance);
    expect_close("u", wy.u_BHMCV, got.u_BHMCV.cpu().to(at::kDouble), kTf32Tolerance);
  } else {
    CHECK_FALSE(got.w_BHMCK.defined());
    CHECK_FALSE(got.inverse_BHMCC.defined());
    expect_close("u", v_BHMCV, got.u_BHMCV.cpu().to(at::kDouble), 1e-6);
  }

  // The output from random chunk-start states and written values.
  const int64_t M = gamma_BHMC.size(2);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(23);
  const at::Tensor states_BHMKV =
      at::randn({c.sizes.batch, c.sizes.heads, M, c.sizes.key_dim, c.sizes.value_dim}, gen, at::kDouble);
  const at::Tensor v_new_BHMCV =
      at::randn({c.sizes.batch, c.sizes.heads, M, C, c.sizes.value_dim}, gen, at::kDouble);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.sizes.key_dim));
  const at::Tensor out =
      dla::ops::fused::chunk_outputs(gpu[0], gpu[1], got.gamma_BHMC, states_BHMKV.cuda().to(at::kFloat),
                                     v_new_BHMCV.cuda().to(at::kFloat), scale);
  CHECK(out.scalar_type() == dtype);
  const at::Tensor ref_BHMCV =
      common::chunk_output(common::to_chunks(q, C, at::kDouble), k_BHMCK, v_new_BHMCV, gamma_BHMC,
                           decay_BHMCC, states_BHMKV, scale);
  // bfloat16 outputs carry its rounding (2^-9 relative) on top of TF32's.
  expect_close("out", common::from_chunks(ref_BHMCV, c.sizes.tokens), out.cpu().to(at::kDouble),
               dtype == at::kFloat ? kTf32Tolerance : 1e-2);
}
