// Tests of the multi-state slot pass: the fused function's hand-written backward against autograd through
// the loop (float64, both outputs, every differentiable input), and the chunkwise form on the fused path
// against the quadratic oracle for every policy.
#include "dla/memory/slot_pass.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>

#include "catch.h"
#include "dla/ops/kernels.h"
#include "dla/ops/tf32_scope.h"
#include "ops/op_testing.h"

namespace {

using dla::memory::SlotPassInputs;
using dla::memory::SlotPassResult;
using dla::test::expect_close;

struct PassDims {
  int64_t batch, heads, chunks, chunk_size, key_dim, value_dim, slots;
};

/// A random slot pass in float64; moves are 0/1 matrices in which each state and token goes to at most one
/// slot, as the segment tables make them. Keys and W are scaled by 1/√K so the states stay of order 1.
/// Tokens land in the first `token_slots` slots only (all when 0), so that the others hold nothing in the
/// chunks no state moves to them, as most Fenwick levels.
SlotPassInputs random_inputs(bool delta_rule, const PassDims& d, uint64_t seed, int64_t token_slots = 0) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t B = d.batch, H = d.heads, N = d.chunks, C = d.chunk_size, K = d.key_dim, V = d.value_dim,
                S = d.slots;
  const double key_scale = 1.0 / std::sqrt(static_cast<double>(K));
  const auto randn = [&](std::vector<int64_t> shape, double scale) {
    return at::randn(shape, gen, f64) * scale;
  };
  const auto moves = [&](int64_t columns, int64_t targets) {
    // Column j goes to slot target[j], or nowhere when target[j] ≥ targets.
    const at::Tensor target = at::randint(targets + 1, {B, H, N, 1, columns}, gen, f64.dtype(at::kLong));
    return (target == at::arange(targets, f64.dtype(at::kLong)).view({targets, 1})).to(at::kDouble);
  };
  SlotPassInputs in;
  in.transported_q_BHNCK = randn({B, H, N, C, K}, 0.5);
  in.read_weight_BHNCS = at::rand({B, H, N, C, S}, gen, f64);
  in.k_to_end_BHNCK = randn({B, H, N, C, K}, key_scale);
  if (delta_rule) {
    in.w_BHNCK = randn({B, H, N, C, K}, key_scale);
    in.t_inverse_BHNCC =
        randn({B, H, N, C, C}, 0.5 / std::sqrt(static_cast<double>(C))).tril(-1) + at::eye(C, f64);
  }
  in.source_v_BHNCV = randn({B, H, N, C, V}, 0.5);
  in.chunk_decay_BHN = at::rand({B, H, N}, gen, f64) * 0.5 + 0.5;
  in.state_move_BHNSS = moves(S, S);
  const int64_t landing = token_slots > 0 ? token_slots : S;
  in.token_move_BHNSC = at::cat({moves(C, landing), at::zeros({B, H, N, S - landing, C}, f64)}, -2);
  return in;
}

std::vector<at::Tensor*> differentiable(SlotPassInputs& in) {
  std::vector<at::Tensor*> out = {&in.transported_q_BHNCK, &in.read_weight_BHNCS, &in.k_to_end_BHNCK,
                                  &in.source_v_BHNCV, &in.chunk_decay_BHN};
  if (in.w_BHNCK.defined()) {
    out.push_back(&in.w_BHNCK);
    out.push_back(&in.t_inverse_BHNCC);
  }
  return out;
}
const char* const kNames[] = {"q", "read_weight", "k_to_end", "source_v", "chunk_decay", "w", "t_inverse"};

std::vector<at::Tensor*> all_tensors(SlotPassInputs& in) {
  std::vector<at::Tensor*> out = differentiable(in);
  out.push_back(&in.state_move_BHNSS);
  out.push_back(&in.token_move_BHNSC);
  return out;
}

/// `in` with every tensor placed by to_device.
template <class ToDevice>
SlotPassInputs placed(SlotPassInputs in, ToDevice to_device) {
  for (at::Tensor* x : all_tensors(in))
    *x = to_device(*x);
  return in;
}

/// Runs the loop under autograd on `base` and the fused pass on to_device(base), both with a loss on both
/// outputs, and compares the outputs (to value_tol) and every input gradient (to grad_tol).
template <class ToDevice>
void expect_same_pass(const SlotPassInputs& base, ToDevice to_device, double value_tol, double grad_tol) {
  const SlotPassResult probe = dla::memory::slot_pass(base, false);
  const at::Tensor inter_weight = dla::test::random_weight(probe.inter_BHNCV.sizes(), 1);
  const at::Tensor state_weight = dla::test::random_weight(probe.final_states_BHSKV.sizes(), 2);
  const auto run = [&](bool fused) {
    const auto place = [&](const at::Tensor& x) { return fused ? to_device(x) : x; };
    SlotPassInputs in = placed(base, place);
    for (at::Tensor* x : differentiable(in))
      *x = x->detach().clone().requires_grad_(true);
    const SlotPassResult r = dla::memory::slot_pass(in, fused);
    const at::Tensor loss =
        (r.inter_BHNCV * place(inter_weight)).sum() + (r.final_states_BHSKV * place(state_weight)).sum();
    loss.backward();
    std::vector<at::Tensor> out = {r.inter_BHNCV.detach(), r.final_states_BHSKV.detach()};
    for (at::Tensor* x : differentiable(in))
      out.push_back(x->grad());
    for (at::Tensor& x : out)
      x = x.defined() ? x.to(at::kCPU, at::kDouble) : x;
    return out;
  };
  const std::vector<at::Tensor> ref = run(false);
  const std::vector<at::Tensor> got = run(true);
  REQUIRE(ref.size() == got.size());
  expect_close("inter", ref[0], got[0], value_tol);
  expect_close("final_states", ref[1], got[1], value_tol);
  for (std::size_t i = 2; i < ref.size(); ++i) {
    INFO("d" << kNames[i - 2]);
    REQUIRE(got[i].defined());
    expect_close(std::string("d") + kNames[i - 2], ref[i], got[i], grad_tol);
  }
}

}  // namespace

TEST_CASE("the fused slot pass and its backward equal autograd through the loop", "[memory][fused]") {
  const bool delta_rule = GENERATE(false, true);
  const int64_t chunks = GENERATE(1, 4);
  const int64_t slots = GENERATE(1, 3);
  CAPTURE(delta_rule, chunks, slots);
  const SlotPassInputs base =
      random_inputs(delta_rule, {2, 2, chunks, 5, 4, 3, slots}, 17 + static_cast<uint64_t>(chunks * slots));
  const auto same = [](const at::Tensor& x) { return x; };
  expect_same_pass(base, same, 1e-12, 1e-10);
}

TEST_CASE("on the GPU the slot-pass kernels equal autograd through the float64 loop",
          "[memory][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the slot-pass kernels are not exercised on this machine");
    return;
  }
  // A full [64, 128] chunk; a partial value tile (40 = 2·16 + 8); 14 slots, which do not all fit in shared
  // memory at once and are worked in groups; 160 values, a full and a partial 128-column tile of the reads.
  // The input gradients run on their kernels where C and K are multiples of 16 and V of 32, else as batched
  // LibTorch products; the reads on theirs where C is 32 or 64 and K and V are multiples of 32.
  const PassDims d = GENERATE(PassDims{2, 2, 5, 64, 128, 128, 8}, PassDims{1, 2, 3, 16, 32, 40, 3},
                              PassDims{1, 1, 3, 64, 128, 24, 14}, PassDims{1, 2, 3, 32, 64, 64, 14},
                              PassDims{1, 2, 3, 64, 64, 160, 5});
  const bool delta_rule = GENERATE(true, false);
  CAPTURE(d.chunks, d.chunk_size, d.key_dim, d.value_dim, d.slots, delta_rule);
  const SlotPassInputs base = random_inputs(delta_rule, d, 29 + static_cast<uint64_t>(d.slots));
  // The kernels multiply in TF32 (10-bit mantissas), against float64 products.
  const dla::ops::Tf32Scope tf32(true);
  const auto cuda = [](const at::Tensor& x) { return x.to(at::kCUDA, at::kFloat); };
  const SlotPassInputs on_gpu = placed(base, cuda);
  REQUIRE(dla::memory::slot_pass_uses_cuda_kernels(on_gpu));
  REQUIRE(dla::memory::slot_pass_gradients_use_cuda_kernels(on_gpu) == (d.value_dim % 32 == 0));
  REQUIRE(dla::memory::slot_pass_reads_use_cuda_kernel(on_gpu) ==
          ((d.chunk_size == 32 || d.chunk_size == 64) && d.key_dim % 32 == 0 && d.value_dim % 32 == 0));
  expect_same_pass(base, cuda, 5e-3, 5e-3);
}

TEST_CASE(
    "on the GPU the slot-pass kernels with compact (bf16) states equal the float64 loop to bf16 precision",
    "[memory][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the slot-pass kernels are not exercised on this machine");
    return;
  }
  // Both kernels of the reads and the gradients run these dims, so the states may be kept in bf16; with 14
  // slots and tokens in 3 of them, some slots are dead in some chunks as well. The gradient kernels stream
  // the states 64 value columns a stage where V allows (128, 64), else 32 (96).
  const bool delta_rule = GENERATE(true, false);
  const PassDims d = GENERATE(PassDims{2, 2, 5, 64, 128, 128, 8}, PassDims{1, 2, 8, 64, 128, 64, 14},
                              PassDims{1, 2, 4, 64, 128, 96, 5});
  CAPTURE(delta_rule, d.slots);
  SlotPassInputs base = random_inputs(delta_rule, d, 53, /*token_slots=*/d.slots == 14 ? 3 : 0);
  base.compact_states = true;
  const dla::ops::Tf32Scope tf32(true);
  const auto cuda = [](const at::Tensor& x) { return x.to(at::kCUDA, at::kFloat); };
  const SlotPassInputs on_gpu = placed(base, cuda);
  REQUIRE(dla::memory::slot_pass_compacts_states(on_gpu));
  REQUIRE(dla::memory::slot_pass_uses_bf16_operands(on_gpu) == (d.slots <= 8));
  // bf16 keeps 8 bits of each state entry (TF32 operands keep 11): 1e-2, as for the ops' bf16 inputs.
  expect_same_pass(base, cuda, 1e-2, 1e-2);
}

TEST_CASE("on the GPU the slot-pass kernels skip the slots that hold nothing and still equal the loop",
          "[memory][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the slot-pass kernels are not exercised on this machine");
    return;
  }
  // Tokens land in 3 of 14 slots, or with compact states (the forward on bf16 tensor cores) in 2 of 6: the
  // others hold a state only in the chunks one moves to them.
  const bool delta_rule = GENERATE(true, false);
  const bool compact = GENERATE(false, true);
  CAPTURE(delta_rule, compact);
  const PassDims d{1, 2, 8, 64, 128, 64, compact ? 6 : 14};
  SlotPassInputs base = random_inputs(delta_rule, d, 41, /*token_slots=*/compact ? 2 : 3);
  base.compact_states = compact;
  const at::Tensor state_move = base.state_move_BHNSS, token_move = base.token_move_BHNSC;
  // Some slot is dead in some chunk: it gets no token and no state.
  REQUIRE((token_move.sum(-1) == 0).logical_and(state_move.sum(-1) == 0).any().item<bool>());
  const dla::ops::Tf32Scope tf32(true);
  const auto cuda = [](const at::Tensor& x) { return x.to(at::kCUDA, at::kFloat); };
  const SlotPassInputs on_gpu = placed(base, cuda);
  REQUIRE(dla::memory::slot_pass_reads_use_cuda_kernel(on_gpu));
  REQUIRE(dla::memory::slot_pass_gradients_use_cuda_kernels(on_gpu));
  REQUIRE(dla::memory::slot_pass_uses_bf16_operands(on_gpu) == compact);
  // Here the kernels leave the states of dead slots unset, which no reader may use. Blocks of NaN of the
  // sizes of the per-chunk states and their gradients, freed, are what the caching allocator hands back.
  {
    const auto nan = [compact](std::vector<int64_t> shape) {
      return at::full(shape, std::numeric_limits<float>::quiet_NaN(),
                      at::device(at::kCUDA).dtype(compact ? at::kBFloat16 : at::kFloat));
    };
    const std::vector<at::Tensor> poison = {
        nan({d.batch, d.heads, d.chunks, d.slots, d.key_dim, d.value_dim}),
        nan({d.batch, d.heads, d.chunks, d.slots, d.key_dim, d.value_dim}),
        nan({d.batch, d.heads, d.chunks, d.slots, d.chunk_size, d.value_dim})};
  }
  const double tolerance = compact ? 1e-2 : 5e-3;  // as in the tests above
  expect_same_pass(base, cuda, tolerance, tolerance);
}

TEST_CASE("on the GPU the slot pass takes its producers' bf16 copies for the same numbers",
          "[memory][fused][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the slot-pass kernels are not exercised on this machine");
    return;
  }
  const bool delta_rule = GENERATE(true, false);
  const PassDims d = GENERATE(PassDims{2, 2, 5, 64, 128, 128, 8}, PassDims{1, 2, 4, 64, 128, 64, 14});
  CAPTURE(delta_rule, d.slots);
  SlotPassInputs base = random_inputs(delta_rule, d, 59);
  base.compact_states = true;
  const dla::ops::Tf32Scope tf32(true);
  const auto cuda = [](const at::Tensor& x) { return x.to(at::kCUDA, at::kFloat); };
  const SlotPassInputs on_gpu = placed(base, cuda);
  // The choice made before the inputs exist is the one made on them.
  const bool bf16_kernels = dla::memory::slot_pass_uses_bf16_operands(on_gpu);
  REQUIRE(bf16_kernels == (d.slots <= 8));
  REQUIRE(dla::memory::slot_pass_takes_bf16_copies(
              {d.batch, d.heads, d.chunks, d.chunk_size, d.key_dim, d.value_dim, d.slots}, at::kCUDA) ==
          bf16_kernels);

  const at::Tensor inter_weight =
      dla::test::random_weight({d.batch, d.heads, d.chunks, d.chunk_size, d.value_dim}, 3)
          .to(at::kCUDA, at::kFloat);
  const auto run = [&](bool copies) {
    SlotPassInputs in = on_gpu;
    for (at::Tensor* x : differentiable(in))
      *x = x->detach().clone().requires_grad_(true);
    if (copies) {
      const auto bf16 = [](const at::Tensor& x) { return x.defined() ? x.detach().to(at::kBFloat16) : x; };
      in.bf16 = {bf16(in.transported_q_BHNCK), bf16(in.k_to_end_BHNCK), bf16(in.w_BHNCK),
                 bf16(in.t_inverse_BHNCC), bf16(in.source_v_BHNCV)};
    }
    const SlotPassResult r = dla::memory::slot_pass(in, /*fused=*/true);
    ((r.inter_BHNCV * inter_weight).sum() + r.final_states_BHSKV.sum()).backward();
    std::vector<at::Tensor> out = {r.inter_BHNCV.detach(), r.final_states_BHSKV.detach()};
    for (at::Tensor* x : differentiable(in))
      out.push_back(x->grad());
    return out;
  };
  // The same bf16 operands either way; only the order of float atomics, if any, may differ.
  const std::vector<at::Tensor> converted = run(false), copied = run(true);
  REQUIRE(converted.size() == copied.size());
  for (std::size_t i = 0; i < converted.size(); ++i) {
    REQUIRE(copied[i].defined());
    expect_close(i < 2 ? "output " + std::to_string(i) : std::string("d") + kNames[i - 2],
                 converted[i].cpu().to(at::kDouble), copied[i].cpu().to(at::kDouble), 1e-6);
  }
}
