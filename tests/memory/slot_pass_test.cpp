// Tests of the multi-state slot pass: the fused function's hand-written backward against autograd through
// the loop (float64, both outputs, every differentiable input), and the chunkwise form on the fused path
// against the quadratic oracle for every policy.
#include "dla/memory/slot_pass.h"

#include <string>
#include <vector>

#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>

#include "catch.h"
#include "dla/ops/kernels.h"
#include "ops/op_testing.h"

namespace {

using dla::memory::SlotPassInputs;
using dla::memory::SlotPassResult;
using dla::test::expect_close;

/// A random slot pass: B 2, H 2, N chunks of C 5, K 4, V 3, S slots; moves are 0/1 matrices in which each
/// state and token goes to at most one slot, as the segment tables make them.
SlotPassInputs random_inputs(bool delta_rule, int64_t chunks, int64_t slots, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t B = 2, H = 2, N = chunks, C = 5, K = 4, V = 3, S = slots;
  const auto randn = [&](std::vector<int64_t> shape) { return at::randn(shape, gen, f64) * 0.5; };
  const auto moves = [&](int64_t columns) {
    // Column j goes to slot target[j], or nowhere when target[j] == S.
    const at::Tensor target = at::randint(S + 1, {B, H, N, 1, columns}, gen, f64.dtype(at::kLong));
    return (target == at::arange(S, f64.dtype(at::kLong)).view({S, 1})).to(at::kDouble);
  };
  SlotPassInputs in;
  in.transported_q_BHNCK = randn({B, H, N, C, K});
  in.read_weight_BHNCS = at::rand({B, H, N, C, S}, gen, f64);
  in.k_to_end_BHNCK = randn({B, H, N, C, K});
  if (delta_rule) {
    in.w_BHNCK = randn({B, H, N, C, K});
    in.t_inverse_BHNCC = randn({B, H, N, C, C}).tril(-1) + at::eye(C, f64);
  }
  in.source_v_BHNCV = randn({B, H, N, C, V});
  in.chunk_decay_BHN = at::rand({B, H, N}, gen, f64) * 0.5 + 0.5;
  in.state_move_BHNSS = moves(S);
  in.token_move_BHNSC = moves(C);
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

}  // namespace

TEST_CASE("the fused slot pass and its backward equal autograd through the loop", "[memory][fused]") {
  const bool delta_rule = GENERATE(false, true);
  const int64_t chunks = GENERATE(1, 4);
  const int64_t slots = GENERATE(1, 3);
  CAPTURE(delta_rule, chunks, slots);
  const SlotPassInputs base =
      random_inputs(delta_rule, chunks, slots, 17 + static_cast<uint64_t>(chunks * slots));
  const SlotPassResult probe = dla::memory::slot_pass(base, false);
  const at::Tensor inter_weight = dla::test::random_weight(probe.inter_BHNCV.sizes(), 1);
  const at::Tensor state_weight = dla::test::random_weight(probe.final_states_BHSKV.sizes(), 2);

  const auto run = [&](bool fused) {
    SlotPassInputs in = base;
    for (at::Tensor* x : differentiable(in))
      *x = x->detach().clone().requires_grad_(true);
    const SlotPassResult r = dla::memory::slot_pass(in, fused);
    ((r.inter_BHNCV * inter_weight).sum() + (r.final_states_BHSKV * state_weight).sum()).backward();
    std::vector<at::Tensor> out = {r.inter_BHNCV.detach(), r.final_states_BHSKV.detach()};
    for (at::Tensor* x : differentiable(in))
      out.push_back(x->grad());
    return out;
  };
  const std::vector<at::Tensor> ref = run(false);
  const std::vector<at::Tensor> got = run(true);
  REQUIRE(ref.size() == got.size());
  expect_close("inter", ref[0], got[0], 1e-12);
  expect_close("final_states", ref[1], got[1], 1e-12);
  for (std::size_t i = 2; i < ref.size(); ++i) {
    INFO("d" << kNames[i - 2]);
    REQUIRE(got[i].defined());
    expect_close(std::string("d") + kNames[i - 2], ref[i], got[i], 1e-10);
  }
}
