// Tests of the multi-state chunkwise form's per-chunk stages: the autograd function with the written-out
// backward against autograd through the LibTorch ops, in value and in the gradient of every input, with and
// without the delta rule, when every output reaches the loss and when only some do; and the same on the GPU
// in float32, and with TF32 on the chunk kernels of both directions, also with q, k and v read in place as
// bf16 tokens. Shapes: B batch, H heads, N chunks, C chunk length, K key dim, V value dim.
#include "dla/memory/intra_chunk.h"

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>

#include "catch.h"
#include "dla/ops/fused.h"
#include "dla/ops/tf32_scope.h"
#include "ops/op_testing.h"

namespace {

using dla::memory::IntraChunkInputs;
using dla::memory::IntraChunkTerms;

/// Random chunked inputs as chunkwise makes them, float64 leaves: unit-norm q and k, log gates < 0, β in (0,
/// 1) and positive read weights, causal like the decay they meet (their values above the diagonal are
/// zeroed).
struct ChunkSizes {
  int64_t B = 2, H = 2, N = 3, C = 16, K = 8, V = 6;
};

IntraChunkInputs random_inputs(bool delta_rule, at::Generator& gen, const ChunkSizes& sizes = {}) {
  const auto [B, H, N, C, K, V] = sizes;
  const auto options = at::TensorOptions().dtype(at::kDouble);
  const auto leaf = [](at::Tensor x) { return x.requires_grad_(true); };
  const at::Tensor q = at::randn({B, H, N, C, K}, gen, options), k = at::randn({B, H, N, C, K}, gen, options);
  return {leaf(q / q.norm(2, -1, true)),
          leaf(k / k.norm(2, -1, true)),
          leaf(at::randn({B, H, N, C, V}, gen, options)),
          leaf(-at::rand({B, H, N, C}, gen, options) * 0.3 - 0.01),
          delta_rule ? leaf(at::rand({B, H, N, C}, gen, options) * 0.9 + 0.05) : at::Tensor(),
          leaf(at::rand({B, H, N, C, C}, gen, options) + 0.25)};
}

std::vector<at::Tensor> outputs_of(const IntraChunkTerms& t) {
  return {t.intra_BHNCV,     t.transported_q_BHNCK, t.k_to_end_BHNCK, t.w_BHNCK,
          t.t_inverse_BHNCC, t.source_v_BHNCV,      t.chunk_decay_BHN};
}

const char* const kOutputNames[] = {"intra",     "transported_q", "k_to_end",   "w",
                                    "t_inverse", "source_v",      "chunk_decay"};
const char* const kInputNames[] = {"dq", "dk", "dv", "dg", "dbeta", "dlam_in"};

/// sum(output · weight) over the outputs `used` picks, and its gradients with respect to every input.
std::vector<at::Tensor> gradients(const IntraChunkInputs& in, const IntraChunkTerms& t,
                                  const std::vector<at::Tensor>& out_weights, const std::vector<bool>& used) {
  const std::vector<at::Tensor> outputs = outputs_of(t);
  at::Tensor loss = at::zeros({}, in.q_BHNCK.options());
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (used[i] && outputs[i].defined()) loss = loss + (outputs[i] * out_weights[i]).sum();
  }
  std::vector<at::Tensor> leaves = {in.q_BHNCK, in.k_BHNCK,   in.v_BHNCV,
                                    in.g_BHNC,  in.beta_BHNC, in.lam_in_BHNCC};
  std::vector<at::Tensor> defined;
  for (const at::Tensor& x : leaves) {
    if (x.defined()) defined.push_back(x);
  }
  return torch::autograd::grad({loss}, defined, {}, /*retain_graph=*/true, /*create_graph=*/false,
                               /*allow_unused=*/true);
}

/// The inputs as float32 leaves on the GPU.
IntraChunkInputs on_gpu(const IntraChunkInputs& in) {
  const auto cuda = [](const at::Tensor& x) {
    return x.defined() ? x.detach().to(at::kCUDA, at::kFloat).requires_grad_(true) : x;
  };
  return {cuda(in.q_BHNCK), cuda(in.k_BHNCK),   cuda(in.v_BHNCV),
          cuda(in.g_BHNC),  cuda(in.beta_BHNC), cuda(in.lam_in_BHNCC)};
}

/// The fused function on `in` against the LibTorch ops on `reference` (the same values), in every output and
/// in every input's gradient, with every output reaching the loss and with some.
void compare_forms(const IntraChunkInputs& reference, const IntraChunkInputs& in, double tol,
                   at::Generator& gen) {
  const IntraChunkTerms ops = dla::memory::intra_chunk_terms(reference, /*fused=*/false);
  const IntraChunkTerms fused = dla::memory::intra_chunk_terms(in, /*fused=*/true);
  const std::vector<at::Tensor> ops_out = outputs_of(ops), fused_out = outputs_of(fused);
  std::vector<at::Tensor> weights;
  for (size_t i = 0; i < ops_out.size(); ++i) {
    REQUIRE(ops_out[i].defined() == fused_out[i].defined());
    if (!ops_out[i].defined()) {
      weights.emplace_back();
      continue;
    }
    dla::test::expect_close(kOutputNames[i], ops_out[i].cpu(), fused_out[i].cpu(), tol);
    weights.push_back(at::randn(ops_out[i].sizes(), gen, at::kDouble).to(ops_out[i].options()));
  }
  const auto all = std::vector<bool>(ops_out.size(), true);
  const auto some = std::vector<bool>{true, false, true, false, true, false, false};
  for (const auto& used : {all, some}) {
    const std::vector<at::Tensor> expected = gradients(reference, ops, weights, used);
    const std::vector<at::Tensor> got = gradients(in, fused, weights, used);
    REQUIRE(got.size() == expected.size());
    size_t name = 0;
    for (size_t i = 0; i < got.size(); ++i, ++name) {
      if (!in.beta_BHNC.defined() && name == 4) ++name;  // no β for SSD
      REQUIRE(expected[i].defined());
      REQUIRE(got[i].defined());
      dla::test::expect_close(kInputNames[name], expected[i].cpu(), got[i].cpu(), tol);
    }
  }
}

void compare_forms(const IntraChunkInputs& in, double tol, at::Generator& gen) {
  compare_forms(in, in, tol, gen);
}

/// `in` with q, k and v as chunkwise hands them to the kernels without padding: [B, T, H, ·] leaves of
/// `dtype` seen as [B, H, N, C, ·]. `rounded` gets the same values in `in`'s dtype and chunk layout.
IntraChunkInputs token_views(const IntraChunkInputs& in, at::ScalarType dtype, IntraChunkInputs& rounded) {
  const auto view = [&](const at::Tensor& x_BHNC_, at::Tensor& rounded_BHNC_) {
    const int64_t N = x_BHNC_.size(2), C = x_BHNC_.size(3);
    const at::Tensor tokens = x_BHNC_.detach().flatten(2, 3).transpose(1, 2).contiguous().to(dtype);
    rounded_BHNC_ =
        tokens.unflatten(1, {N, C}).movedim(3, 1).to(x_BHNC_.scalar_type()).contiguous().requires_grad_(true);
    return tokens.requires_grad_(true).unflatten(1, {N, C}).movedim(3, 1);
  };
  rounded = in;
  IntraChunkInputs out = in;
  out.q_BHNCK = view(in.q_BHNCK, rounded.q_BHNCK);
  out.k_BHNCK = view(in.k_BHNCK, rounded.k_BHNCK);
  out.v_BHNCV = view(in.v_BHNCV, rounded.v_BHNCV);
  return out;
}

}  // namespace

TEST_CASE("the per-chunk stages' written-out backward equals autograd through their ops", "[memory]") {
  const bool delta_rule = GENERATE(false, true);
  CAPTURE(delta_rule);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(delta_rule ? 71 : 72);
  const IntraChunkInputs in = random_inputs(delta_rule, gen);
  REQUIRE_FALSE(dla::memory::intra_chunk_forward_uses_cuda_kernel(in));
  REQUIRE_FALSE(dla::memory::intra_chunk_backward_uses_cuda_kernel(in));
  compare_forms(in, 1e-10, gen);
}

TEST_CASE("on the GPU the per-chunk stages' written-out backward equals autograd through their ops",
          "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the per-chunk stages are not exercised on the GPU on this machine");
    return;
  }
  const bool delta_rule = GENERATE(false, true);
  CAPTURE(delta_rule);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(delta_rule ? 73 : 74);
  const IntraChunkInputs in = on_gpu(random_inputs(delta_rule, gen));
  const dla::ops::Tf32Scope exact(false);
  // Without TF32 (float32 training) the backward stays on exact float32 LibTorch ops.
  const IntraChunkInputs kernel_sized =
      on_gpu(random_inputs(delta_rule, gen, {.B = 1, .H = 1, .N = 1, .C = 64, .K = 64, .V = 32}));
  REQUIRE_FALSE(dla::memory::intra_chunk_forward_uses_cuda_kernel(kernel_sized));
  REQUIRE_FALSE(dla::memory::intra_chunk_backward_uses_cuda_kernel(kernel_sized));
  compare_forms(in, 1e-4, gen);
}

TEST_CASE("on the GPU with TF32 the per-chunk stages take the chunk kernels and agree with their ops",
          "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the per-chunk stages' kernels are not exercised on this machine");
    return;
  }
  const bool delta_rule = GENERATE(false, true);
  // Both key dims of the backward kernel; one value pass of 32 columns, two of 64, and 64 then 32.
  const ChunkSizes sizes = GENERATE(ChunkSizes{.B = 1, .H = 2, .N = 3, .C = 64, .K = 64, .V = 32},
                                    ChunkSizes{.B = 2, .H = 1, .N = 2, .C = 64, .K = 128, .V = 128},
                                    ChunkSizes{.B = 1, .H = 1, .N = 3, .C = 64, .K = 128, .V = 96});
  CAPTURE(delta_rule, sizes.K, sizes.V);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>((delta_rule ? 75 : 76) + sizes.V);
  const IntraChunkInputs in = on_gpu(random_inputs(delta_rule, gen, sizes));
  const dla::ops::Tf32Scope tf32(true);
  const auto tokens = [](const at::Tensor& x) { return x.flatten(2, 3).transpose(1, 2); };
  REQUIRE(dla::ops::fused::chunk_stages_apply(tokens(in.q_BHNCK), tokens(in.k_BHNCK), tokens(in.v_BHNCV),
                                              at::kFloat, sizes.C));
  REQUIRE(dla::memory::intra_chunk_forward_uses_cuda_kernel(in));
  REQUIRE(dla::memory::intra_chunk_backward_uses_cuda_kernel(in));
  compare_forms(in, 5e-3, gen);
}

TEST_CASE("on the GPU the chunk kernels read q, k and v in place as bf16 tokens and write their gradients so",
          "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the per-chunk stages' kernels are not exercised on this machine");
    return;
  }
  const bool delta_rule = GENERATE(false, true);
  const ChunkSizes sizes = GENERATE(ChunkSizes{.B = 2, .H = 3, .N = 2, .C = 64, .K = 64, .V = 96},
                                    ChunkSizes{.B = 1, .H = 2, .N = 3, .C = 64, .K = 128, .V = 128});
  CAPTURE(delta_rule, sizes.K, sizes.V);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>((delta_rule ? 77 : 78) + sizes.K);
  const IntraChunkInputs exact = random_inputs(delta_rule, gen, sizes);
  const dla::ops::Tf32Scope tf32(true);
  IntraChunkInputs reference;
  const IntraChunkInputs in = token_views(on_gpu(exact), at::kBFloat16, reference);
  REQUIRE(in.q_BHNCK.scalar_type() == at::kBFloat16);
  REQUIRE_FALSE(in.q_BHNCK.is_contiguous());
  REQUIRE(dla::memory::intra_chunk_forward_uses_cuda_kernel(in));
  REQUIRE(dla::memory::intra_chunk_backward_uses_cuda_kernel(in));
  // The reference runs in float64 on the same (bf16) values; the kernels' gradients of q, k and v are bf16,
  // whose rounding (2^-9 relative) comes on top of TF32's.
  const auto float64 = [](const at::Tensor& x) {
    return x.defined() ? x.detach().to(at::kDouble).requires_grad_(true) : x;
  };
  reference = {float64(reference.q_BHNCK), float64(reference.k_BHNCK),   float64(reference.v_BHNCV),
               float64(reference.g_BHNC),  float64(reference.beta_BHNC), float64(reference.lam_in_BHNCC)};
  compare_forms(reference, in, 1e-2, gen);

  // Asked for, the kernels also write the slot pass's operands in bf16: the float32 terms rounded.
  IntraChunkInputs with_copies = in;
  with_copies.bf16_copies = true;
  const IntraChunkTerms t = dla::memory::intra_chunk_terms(with_copies, /*fused=*/true);
  const auto rounded = [](const at::Tensor& x) { return x.detach().to(at::kBFloat16); };
  CHECK(at::equal(t.bf16.transported_q_BHNCK, rounded(t.transported_q_BHNCK)));
  CHECK(at::equal(t.bf16.k_to_end_BHNCK, rounded(t.k_to_end_BHNCK)));
  CHECK(t.bf16.w_BHNCK.defined() == delta_rule);
  CHECK(t.bf16.t_inverse_BHNCC.defined() == delta_rule);
  CHECK(t.bf16.source_v_BHNCV.defined() == delta_rule);
  if (delta_rule) {
    CHECK(at::equal(t.bf16.w_BHNCK, rounded(t.w_BHNCK)));
    CHECK(at::equal(t.bf16.t_inverse_BHNCC, rounded(t.t_inverse_BHNCC)));
    CHECK(at::equal(t.bf16.source_v_BHNCV, rounded(t.source_v_BHNCV)));
  }
  CHECK_FALSE(dla::memory::intra_chunk_terms(in, /*fused=*/true).bf16.transported_q_BHNCK.defined());
}
