// Tests of the fused chunkwise ops: the hand-written backward against autograd through the LibTorch-op path
// (float64, every input's gradient), the CUDA state-pass kernels (exact, and TF32 under a Tf32Scope) against
// their LibTorch loops, the fused op on the GPU against the float64 CPU op, and the kernel choice.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, M chunks, C chunk length.
#include "dla/ops/fused.h"

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/Context.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_solve_triangular.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <torch/utils.h>

#include "catch.h"
#include "dla/model/causal_lm.h"
#include "dla/ops/gdn.h"
#include "dla/ops/kernels.h"
#include "dla/ops/ssd.h"
#include "dla/ops/tf32_scope.h"
#include "dla/util/error.h"
#include "model/model_testing.h"
#include "ops/op_testing.h"

namespace {

using dla::ops::KernelChoice;
using dla::ops::OpResult;
using dla::test::expect_close;
using dla::test::KernelChoiceScope;
using dla::test::OpInputs;
using dla::test::OpSizes;

const std::vector<std::string> kInputNames = {"q", "k", "v", "g", "beta", "initial_state"};

/// gdn::chunk (delta_rule) or ssd::chunk on inputs listed as kInputNames, under `choice`.
OpResult run_chunk(const std::vector<at::Tensor>& x, bool delta_rule, int64_t chunk_size,
                   KernelChoice choice) {
  const KernelChoiceScope scope(choice);
  const double scale = delta_rule ? 0.3 : 1.0;
  if (delta_rule) return dla::ops::gdn::chunk(x[0], x[1], x[2], x[3], x[4], scale, x[5], chunk_size);
  return dla::ops::ssd::chunk(x[0], x[1], x[2], x[3], scale, x[5], chunk_size);
}

std::vector<at::Tensor> tensors_of(const OpInputs& in, bool delta_rule) {
  return {in.q, in.k, in.v, in.g, delta_rule ? in.beta : at::Tensor(), in.initial_state};
}

/// CHECKs out, final state and all input gradients of the fused path against the LibTorch-op path on the
/// same inputs; `to_device` moves the fused path's inputs (the reference stays where `inputs` are).
void expect_fused_matches_aten(const std::vector<at::Tensor>& inputs, bool delta_rule, int64_t chunk_size,
                               double tol, const std::function<at::Tensor(const at::Tensor&)>& to_device) {
  const OpResult ref = run_chunk(inputs, delta_rule, chunk_size, KernelChoice::aten);
  const at::Tensor out_weight = dla::test::random_weight(ref.out.sizes(), 11);
  const at::Tensor state_weight = dla::test::random_weight(ref.final_state.sizes(), 12);
  std::vector<at::Tensor> device_inputs;
  for (const auto& x : inputs)
    device_inputs.push_back(x.defined() ? to_device(x) : x);
  const OpResult got = run_chunk(device_inputs, delta_rule, chunk_size, KernelChoice::fused);
  expect_close("out", ref.out.to(at::kDouble), got.out.cpu().to(at::kDouble), tol);
  expect_close("final_state", ref.final_state.to(at::kDouble), got.final_state.cpu().to(at::kDouble), tol);

  const auto run = [&](KernelChoice choice) {
    return [=](const std::vector<at::Tensor>& x) { return run_chunk(x, delta_rule, chunk_size, choice); };
  };
  const auto ref_grads =
      dla::test::op_gradients(run(KernelChoice::aten), inputs, out_weight.to(ref.out.options()),
                              state_weight.to(ref.final_state.options()));
  const auto got_grads =
      dla::test::op_gradients(run(KernelChoice::fused), device_inputs, out_weight.to(got.out.options()),
                              state_weight.to(got.final_state.options()));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    INFO("d" << kInputNames[i]);
    REQUIRE(ref_grads[i].defined() == got_grads[i].defined());
    if (!ref_grads[i].defined()) continue;
    CHECK(got_grads[i].scalar_type() == device_inputs[i].scalar_type());
    expect_close("d" + kInputNames[i], ref_grads[i].to(at::kDouble), got_grads[i].cpu().to(at::kDouble), tol);
  }
}

}  // namespace

TEST_CASE("the fused chunk and its hand-written backward equal autograd through the LibTorch ops",
          "[ops][fused]") {
  const bool delta_rule = GENERATE(true, false);
  const bool with_initial_state = GENERATE(true, false);
  const auto [tokens, chunk_size] =
      GENERATE(std::pair<int64_t, int64_t>{8, 4}, std::pair<int64_t, int64_t>{37, 16},
               std::pair<int64_t, int64_t>{5, 8});
  CAPTURE(delta_rule, with_initial_state, tokens, chunk_size);
  const OpInputs in =
      dla::test::random_inputs({.batch = 2, .tokens = tokens, .heads = 2, .key_dim = 8, .value_dim = 12},
                               with_initial_state, at::kDouble, 40 + static_cast<uint64_t>(tokens));
  expect_fused_matches_aten(tensors_of(in, delta_rule), delta_rule, chunk_size, 1e-10,
                            [](const at::Tensor& x) { return x; });
}

TEST_CASE("the fused backward handles a loss on only one of the outputs", "[ops][fused]") {
  const OpInputs in = dla::test::random_inputs({.tokens = 12}, true, at::kDouble, 7);
  const auto grads_of = [&](KernelChoice choice, bool use_out) {
    std::vector<at::Tensor> leaves;
    for (const auto& x : tensors_of(in, true))
      leaves.push_back(x.detach().clone().requires_grad_(true));
    const OpResult r = run_chunk(leaves, true, 4, choice);
    (use_out ? r.out.pow(2).sum() : r.final_state.pow(2).sum()).backward();
    return leaves;
  };
  for (const bool use_out : {true, false}) {
    const auto ref = grads_of(KernelChoice::aten, use_out);
    const auto got = grads_of(KernelChoice::fused, use_out);
    for (std::size_t i = 0; i < ref.size(); ++i) {
      // Autograd leaves the gradient of an input the loss does not reach undefined; the fused backward
      // returns zeros.
      const at::Tensor ref_grad = ref[i].grad().defined() ? ref[i].grad() : at::zeros_like(ref[i]);
      REQUIRE(got[i].grad().defined());
      expect_close("d" + kInputNames[i], ref_grad, got[i].grad(), 1e-10);
    }
  }
}

TEST_CASE("the kernel choice parses auto, aten and fused and names the source of a bad value",
          "[ops][fused]") {
  CHECK(dla::ops::parse_kernel_choice("auto", "x") == KernelChoice::automatic);
  CHECK(dla::ops::parse_kernel_choice("aten", "x") == KernelChoice::aten);
  CHECK(dla::ops::parse_kernel_choice("fused", "x") == KernelChoice::fused);
  CHECK_THROWS_WITH(dla::ops::parse_kernel_choice("triton", "DLA_KERNELS"),
                    "DLA_KERNELS: expected auto, aten or fused, got 'triton'");
  const KernelChoiceScope scope(KernelChoice::automatic);
  CHECK_FALSE(dla::ops::use_fused_kernels(at::zeros({1})));
}

namespace {

struct StatePassSizes {
  int64_t batch, heads, chunks, chunk_size, key_dim, value_dim;
};

/// Seeded float32 CPU operands of both state-pass directions; w is undefined without the delta rule.
struct StatePassInputs {
  at::Tensor k_to_end, u, w, chunk_decay, initial, q_read, d_out, d_intra, d_final;
};

StatePassInputs random_state_pass_inputs(const StatePassSizes& d, bool delta_rule) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const auto random = [&](std::vector<int64_t> shape, double scale) {
    return at::randn(shape, gen, f32) * scale;
  };
  const double key_scale = 1.0 / std::sqrt(static_cast<double>(d.key_dim));
  StatePassInputs in;
  in.k_to_end = random({d.batch, d.heads, d.chunks, d.chunk_size, d.key_dim}, key_scale);
  in.u = random({d.batch, d.heads, d.chunks, d.chunk_size, d.value_dim}, 1.0);
  if (delta_rule) in.w = random({d.batch, d.heads, d.chunks, d.chunk_size, d.key_dim}, key_scale);
  in.chunk_decay = at::rand({d.batch, d.heads, d.chunks}, gen, f32) * 0.5 + 0.5;
  in.initial = random({d.batch, d.heads, d.key_dim, d.value_dim}, 1.0);
  in.q_read = random({d.batch, d.heads, d.chunks, d.chunk_size, d.key_dim}, key_scale);
  in.d_out = random({d.batch, d.heads, d.chunks, d.chunk_size, d.value_dim}, 1.0);
  in.d_intra = random({d.batch, d.heads, d.chunks, d.chunk_size, d.value_dim}, 1.0);
  in.d_final = random({d.batch, d.heads, d.key_dim, d.value_dim}, 1.0);
  return in;
}

/// CHECKs both directions of the state pass on the GPU against its CPU loop to `tol` (relative RMS) and
/// returns the larger error of the two final states (final_state, d_initial_state), which every chunk's
/// products reach.
double expect_state_pass_matches_loop(const StatePassInputs& in, double tol) {
  const auto cuda = [](const at::Tensor& x) { return x.defined() ? x.cuda() : x; };
  REQUIRE(dla::ops::fused::state_pass_uses_cuda_kernel(cuda(in.k_to_end), cuda(in.u)));
  REQUIRE_FALSE(dla::ops::fused::state_pass_uses_cuda_kernel(in.k_to_end, in.u));

  const auto ref = dla::ops::fused::state_pass_forward(in.k_to_end, in.u, in.w, in.chunk_decay, in.initial);
  const auto got = dla::ops::fused::state_pass_forward(cuda(in.k_to_end), cuda(in.u), cuda(in.w),
                                                       cuda(in.chunk_decay), cuda(in.initial));
  expect_close("states", ref.states_BHMKV, got.states_BHMKV.cpu(), tol);
  expect_close("v_new", ref.v_new_BHMCV, got.v_new_BHMCV.cpu(), tol);
  const double final_error =
      expect_close("final_state", ref.final_state_BHKV, got.final_state_BHKV.cpu(), tol).rel_rms_error;

  const auto ref_back = dla::ops::fused::state_pass_backward(in.q_read, in.d_out, in.d_intra, in.k_to_end,
                                                             in.w, in.chunk_decay, in.d_final);
  const auto got_back = dla::ops::fused::state_pass_backward(cuda(in.q_read), cuda(in.d_out),
                                                             cuda(in.d_intra), cuda(in.k_to_end), cuda(in.w),
                                                             cuda(in.chunk_decay), cuda(in.d_final));
  expect_close("d_states_next", ref_back.d_states_next_BHMKV, got_back.d_states_next_BHMKV.cpu(), tol);
  expect_close("d_v_new", ref_back.d_v_new_BHMCV, got_back.d_v_new_BHMCV.cpu(), tol);
  const double initial_error =
      expect_close("d_initial_state", ref_back.d_initial_state_BHKV, got_back.d_initial_state_BHKV.cpu(), tol)
          .rel_rms_error;
  return std::max(final_error, initial_error);
}

}  // namespace

TEST_CASE("on the GPU the state-pass kernels equal their LibTorch loops", "[ops][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the state-pass kernels are not exercised on this machine");
    return;
  }
  const StatePassSizes d = GENERATE(StatePassSizes{2, 3, 5, 64, 128, 128},
                                    StatePassSizes{1, 2, 3, 16, 32, 40}, StatePassSizes{1, 1, 2, 8, 256, 24});
  const bool delta_rule = GENERATE(true, false);
  CAPTURE(d.chunks, d.chunk_size, d.key_dim, d.value_dim, delta_rule);
  // Outside a Tf32Scope the exact float32 kernels run; 1e-5 holds only for them.
  REQUIRE_FALSE(dla::ops::tf32_allowed());
  expect_state_pass_matches_loop(random_state_pass_inputs(d, delta_rule), 1e-5);
}

TEST_CASE("on the GPU under a Tf32Scope the state-pass kernels multiply in TF32 where the dims allow it",
          "[ops][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the TF32 state-pass kernels are not exercised on this machine");
    return;
  }
  // C = 8 is no whole number of 16-row tiles: those dims keep the exact kernels under the scope.
  struct Tf32Case {
    StatePassSizes sizes;
    bool tensor_cores;
  };
  const Tf32Case c = GENERATE(Tf32Case{{2, 3, 5, 64, 128, 128}, true}, Tf32Case{{1, 2, 3, 16, 32, 40}, true},
                              Tf32Case{{1, 1, 2, 8, 256, 24}, false});
  const StatePassSizes& d = c.sizes;
  const bool tensor_cores = c.tensor_cores;
  const bool delta_rule = GENERATE(true, false);
  CAPTURE(d.chunks, d.chunk_size, d.key_dim, d.value_dim, delta_rule);
  const dla::ops::Tf32Scope tf32(true);
  // TF32 operands round to 2^-11 relative, and sums over K or C such products carried over a few chunks
  // measured 2e-4..6e-4 relative RMS on an H200: 5e-3 leaves a margin of ten.
  const double error = expect_state_pass_matches_loop(random_state_pass_inputs(d, delta_rule), 5e-3);
  // TF32 rounding shows far above float32's where the tensor-core kernels ran, and only there.
  if (tensor_cores)
    CHECK(error > 1e-5);
  else
    CHECK(error <= 1e-5);
}

TEST_CASE(
    "on the GPU the state-pass kernels take bf16 operands, on bf16 tensor cores where the dims allow it",
    "[ops][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the bf16 state-pass kernels are not exercised on this machine");
    return;
  }
  // V = 200 ends in a tile of 8 columns; K = 256 has no bf16 kernel, so its operands go on in float32. With
  // few heads the blocks take 32 value columns; 160 heads of V = 128 fill a GPU of up to 640 SMs with blocks
  // of 64 columns.
  struct Bf16Case {
    StatePassSizes sizes;
    bool tensor_cores;
  };
  const Bf16Case c =
      GENERATE(Bf16Case{{2, 3, 5, 64, 128, 128}, true}, Bf16Case{{1, 2, 3, 32, 64, 40}, true},
               Bf16Case{{1, 1, 4, 64, 64, 200}, true}, Bf16Case{{1, 2, 3, 32, 128, 64}, true},
               Bf16Case{{4, 40, 2, 64, 128, 128}, true}, Bf16Case{{4, 40, 2, 32, 64, 96}, true},
               Bf16Case{{1, 1, 2, 64, 256, 24}, false});
  const StatePassSizes& d = c.sizes;
  const bool delta_rule = GENERATE(true, false);
  CAPTURE(d.chunks, d.chunk_size, d.key_dim, d.value_dim, delta_rule);
  // The operands that prepare_chunks and chunk_value_gradient hand over in bf16; the CPU loop reads the same
  // rounded numbers in float32.
  StatePassInputs in = random_state_pass_inputs(d, delta_rule);
  for (at::Tensor* x : {&in.k_to_end, &in.w, &in.q_read, &in.d_out}) {
    if (x->defined()) *x = x->to(at::kBFloat16);
  }
  // The kernels round S and v_new (dS and dv_new) to bf16 where they are operands, 2^-9 relative: 1e-2
  // leaves a margin over the sums of such products carried over a few chunks.
  const double error = expect_state_pass_matches_loop(in, 1e-2);
  if (c.tensor_cores)
    CHECK(error > 1e-5);
  else
    CHECK(error <= 1e-5);
}

TEST_CASE("on the GPU the fused chunk equals the float64 CPU op, in float32 and from bfloat16 inputs",
          "[ops][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the fused GPU path is not exercised on this machine");
    return;
  }
  const bool delta_rule = GENERATE(true, false);
  const auto input_dtype = GENERATE(at::kFloat, at::kBFloat16);
  CAPTURE(delta_rule, input_dtype);
  const OpInputs in = dla::test::random_inputs(
      {.batch = 2, .tokens = 200, .heads = 3, .key_dim = 64, .value_dim = 96}, true, at::kDouble, 3);
  // bfloat16 inputs are rounded once before both paths see them, so both compute from the same numbers.
  std::vector<at::Tensor> inputs;
  for (const auto& x : tensors_of(in, delta_rule))
    inputs.push_back(x.defined() ? x.to(input_dtype).to(at::kDouble) : x);
  // float32 compute over 4 chunks of 64 against float64; bfloat16 outputs and gradients carry its rounding.
  const double tol = input_dtype == at::kFloat ? 1e-5 : 1e-2;
  expect_fused_matches_aten(inputs, delta_rule, 64, tol,
                            [&](const at::Tensor& x) { return x.to(at::kCUDA, input_dtype); });
}

TEST_CASE("on the GPU under a Tf32Scope the backward's per-chunk kernels equal the float64 CPU op",
          "[ops][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the backward's per-chunk kernels are not exercised on this machine");
    return;
  }
  struct Case {
    OpSizes sizes;
    int64_t chunk_size;
  };
  // T = 200 ends in a partial chunk; (1, 128, 4, 128, 128) is a model's head shape; the third case has C = 32
  // and V = 48, whose last value pass is 16 columns wide.
  const Case c = GENERATE(Case{{.batch = 2, .tokens = 200, .heads = 3, .key_dim = 64, .value_dim = 96}, 64},
                          Case{{.batch = 1, .tokens = 128, .heads = 4, .key_dim = 128, .value_dim = 128}, 64},
                          Case{{.batch = 2, .tokens = 72, .heads = 1, .key_dim = 128, .value_dim = 48}, 32});
  const bool delta_rule = GENERATE(true, false);
  const bool with_initial_state = GENERATE(true, false);
  CAPTURE(c.sizes.tokens, c.sizes.key_dim, c.sizes.value_dim, c.chunk_size, delta_rule, with_initial_state);
  const OpInputs in = dla::test::random_inputs(c.sizes, with_initial_state, at::kDouble, 5);
  const dla::ops::Tf32Scope tf32(true);
  const auto to_gpu = [](const at::Tensor& x) { return x.to(at::kCUDA, at::kFloat); };
  REQUIRE(dla::ops::fused::chunk_gradients_apply(to_gpu(in.q), to_gpu(in.k), to_gpu(in.v), at::kFloat,
                                                 c.chunk_size));
  // TF32 products against float64, as for the forward's per-chunk kernels (chunk_stages_test.cpp).
  expect_fused_matches_aten(tensors_of(in, delta_rule), delta_rule, c.chunk_size, 5e-3, to_gpu);
}

TEST_CASE("on the GPU the backward's per-chunk kernels handle a loss on only the final state",
          "[ops][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the backward's per-chunk kernels are not exercised on this machine");
    return;
  }
  const OpInputs in = dla::test::random_inputs(
      {.batch = 1, .tokens = 100, .heads = 2, .key_dim = 64, .value_dim = 64}, true, at::kDouble, 9);
  const dla::ops::Tf32Scope tf32(true);
  const auto grads_of = [&](KernelChoice choice, bool on_gpu) {
    std::vector<at::Tensor> leaves;
    for (const auto& x : tensors_of(in, true))
      leaves.push_back((on_gpu ? x.to(at::kCUDA, at::kFloat) : x).detach().requires_grad_(true));
    run_chunk(leaves, true, 64, choice).final_state.pow(2).sum().backward();
    return leaves;
  };
  const auto ref = grads_of(KernelChoice::aten, false);
  const auto got = grads_of(KernelChoice::fused, true);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    REQUIRE(got[i].grad().defined());
    // q reaches only the outputs: its gradient is zero on both paths (compared by absolute error).
    const at::Tensor ref_grad = ref[i].grad().defined() ? ref[i].grad() : at::zeros_like(ref[i]);
    expect_close("d" + kInputNames[i], ref_grad, got[i].grad().cpu().to(at::kDouble), 5e-3);
  }
}

TEST_CASE("unit_lower_inverse inverts I + A from A's strictly lower part, on the CPU and the GPU",
          "[ops][fused][cuda]") {
  const int64_t n = GENERATE(1, 6, 16, 64, 80);
  CAPTURE(n);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(n));
  // Entries on and above the diagonal are garbage the inverse must ignore.
  const at::Tensor a = at::randn({3, 2, n, n}, gen, at::TensorOptions().dtype(at::kDouble)) * 0.2;
  const at::Tensor unit_lower = a.tril(-1) + at::eye(n, a.options());
  const at::Tensor inverse = dla::ops::fused::unit_lower_inverse(a);
  expect_close("(I + A)^-1 (I + A)", at::eye(n, a.options()).expand_as(a), inverse.matmul(unit_lower), 1e-12);
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the inverse kernel is not exercised on this machine");
    return;
  }
  const at::Tensor got =
      dla::ops::fused::unit_lower_inverse(a.to(at::kCUDA, at::kFloat)).cpu().to(at::kDouble);
  expect_close("CUDA inverse", inverse, got, 1e-5);
}

TEST_CASE("differentiable_unit_lower_inverse has the triangular solve's gradient", "[ops][fused]") {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(12);
  const int64_t n = 16;
  const at::Tensor a = (at::randn({2, 3, n, n}, gen, at::kDouble) * 0.2).tril(-1);
  const at::Tensor upstream = at::randn({2, 3, n, n}, gen, at::kDouble);
  const auto gradient = [&](bool closed_form) {
    const at::Tensor leaf = a.clone().requires_grad_();
    const at::Tensor t =
        closed_form ? dla::ops::fused::differentiable_unit_lower_inverse(leaf)
                    : at::linalg_solve_triangular(leaf, at::eye(n, a.options()).expand_as(a), /*upper=*/false,
                                                  /*left=*/true, /*unitriangular=*/true);
    (t * upstream).sum().backward();
    return leaf.grad();
  };
  const at::Tensor expected = gradient(false);
  // The solve's gradient is 0 on and above the diagonal too (the unit diagonal is given, not read).
  CHECK(at::equal(expected.triu(), at::zeros_like(expected)));
  expect_close("dA", expected, gradient(true), 1e-12);
}

TEST_CASE("a model trains the same on the fused path as on the LibTorch ops", "[ops][fused][model]") {
  const auto mixer = GENERATE(dla::model::MixerKind::gdn, dla::model::MixerKind::mamba2);
  CAPTURE(static_cast<int>(mixer));
  const dla::model::ModelOptions options = dla::test::tiny_model_options(mixer);
  const at::Tensor ids = at::randint(50, {2, 21}, at::make_generator<at::CPUGeneratorImpl>(4), at::kLong);
  const auto loss_and_grads = [&](KernelChoice choice) {
    const KernelChoiceScope scope(choice);
    torch::manual_seed(8);
    dla::model::CausalLM model(options);
    const at::Tensor loss = dla::model::next_token_loss(model->forward(ids), ids);
    loss.backward();
    std::vector<at::Tensor> out{loss.detach()};
    for (const auto& p : model->parameters())
      out.push_back(p.grad());
    return out;
  };
  const auto ref = loss_and_grads(KernelChoice::aten);
  const auto got = loss_and_grads(KernelChoice::fused);
  REQUIRE(ref.size() == got.size());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CAPTURE(i);
    expect_close(i == 0 ? "loss" : "parameter gradient", ref[i], got[i], 1e-5);
  }
}
