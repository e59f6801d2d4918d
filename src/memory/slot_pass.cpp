// The multi-state slot pass: the loop (under autograd, or as the fused function's forward) and the fused
// function's backward. With X_s the slot states at a chunk's start, per chunk:
//   reads   R_s = q̃ X_s,                  inter = Σ_s w_s ⊙ R_s      (w: the read weights, per query)
//   carry   Y_s = e X_s − K̃ᵀ (W X_s)     (e X_s for SSD)
//   writes  Z_r = T (m_r ⊙ v)             (m_r ⊙ v for SSD; m_r: the tokens landing in slot r)
//   next    X'_r = Σ_s M[r, s] Y_s + K̃ᵀ Z_r
// Shapes: B batch, H heads, N chunks, C chunk length, K key dim, V value dim, S slots.
#include "dla/memory/slot_pass.h"

#include <vector>

#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

namespace dla::memory {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LoopResult {
  SlotPassResult result;
  std::vector<at::Tensor> start_states_BHSKV;  ///< X at each chunk's start, kept when asked for
};

/// The writes Z of chunk n, [B,H,S,C,V].
at::Tensor chunk_writes(const SlotPassInputs& in, int64_t n) {
  const at::Tensor landed_BHSCV =
      in.token_move_BHNSC.select(2, n).unsqueeze(-1) * in.source_v_BHNCV.select(2, n).unsqueeze(2);
  return in.t_inverse_BHNCC.defined() ? in.t_inverse_BHNCC.select(2, n).unsqueeze(2).matmul(landed_BHSCV)
                                      : landed_BHSCV;
}

LoopResult run_loop(const SlotPassInputs& in, bool keep_states) {
  const int64_t batch = in.transported_q_BHNCK.size(0), heads = in.transported_q_BHNCK.size(1);
  const int64_t num_chunks = in.transported_q_BHNCK.size(2), key_dim = in.transported_q_BHNCK.size(4);
  const int64_t value_dim = in.source_v_BHNCV.size(4), num_slots = in.state_move_BHNSS.size(3);
  at::Tensor states_BHSKV =
      at::zeros({batch, heads, num_slots, key_dim, value_dim}, in.transported_q_BHNCK.options());
  LoopResult out;
  std::vector<at::Tensor> inter_BHCV;
  for (int64_t n = 0; n < num_chunks; ++n) {
    if (keep_states) out.start_states_BHSKV.push_back(states_BHSKV);
    const at::Tensor reads_BHSCV = in.transported_q_BHNCK.select(2, n).unsqueeze(2).matmul(states_BHSKV);
    const at::Tensor weight_BHSC1 = in.read_weight_BHNCS.select(2, n).transpose(-1, -2).unsqueeze(-1);
    inter_BHCV.push_back((weight_BHSC1 * reads_BHSCV).sum(2));

    const at::Tensor k_to_end_t_BH1KC = in.k_to_end_BHNCK.select(2, n).transpose(-1, -2).unsqueeze(2);
    at::Tensor carried_BHSKV = in.chunk_decay_BHN.select(2, n).view({batch, heads, 1, 1, 1}) * states_BHSKV;
    if (in.w_BHNCK.defined()) {
      // Every state follows the delta rule's transition: exp(γ_last) S − K̃ᵀ (W S).
      carried_BHSKV =
          carried_BHSKV - k_to_end_t_BH1KC.matmul(in.w_BHNCK.select(2, n).unsqueeze(2).matmul(states_BHSKV));
    }
    const at::Tensor moved_BHSX =
        in.state_move_BHNSS.select(2, n).matmul(carried_BHSKV.reshape({batch, heads, num_slots, -1}));
    states_BHSKV = moved_BHSX.view({batch, heads, num_slots, key_dim, value_dim}) +
                   k_to_end_t_BH1KC.matmul(chunk_writes(in, n));
  }
  out.result = {at::stack(inter_BHCV, /*dim=*/2), states_BHSKV};
  return out;
}

enum Input {
  kQ,
  kReadWeight,
  kKToEnd,
  kW,
  kTInverse,
  kSourceV,
  kChunkDecay,
  kStateMove,
  kTokenMove,
  kNumInputs
};

SlotPassInputs inputs_of(const variable_list& x, bool delta_rule) {
  return {x[kQ],
          x[kReadWeight],
          x[kKToEnd],
          delta_rule ? x[kW] : at::Tensor(),
          delta_rule ? x[kTInverse] : at::Tensor(),
          x[kSourceV],
          x[kChunkDecay],
          x[kStateMove],
          x[kTokenMove]};
}

class SlotPassFunction : public torch::autograd::Function<SlotPassFunction> {
 public:
  /// `inputs` in Input order (absent W and T as empty placeholders), already in the compute dtype.
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, bool delta_rule) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    variable_list saved(inputs.begin(), inputs.end());
    LoopResult loop = run_loop(inputs_of(saved, delta_rule), /*keep_states=*/true);
    saved.push_back(at::stack(loop.start_states_BHSKV, /*dim=*/2));
    ctx->save_for_backward(saved);
    ctx->saved_data["delta_rule"] = delta_rule;
    return {loop.result.inter_BHNCV, loop.result.final_states_BHSKV};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const variable_list saved = ctx->get_saved_variables();
    const bool delta_rule = ctx->saved_data["delta_rule"].toBool();
    const SlotPassInputs in = inputs_of(saved, delta_rule);
    const at::Tensor& start_states_BHNSKV = saved[kNumInputs];
    const int64_t batch = in.transported_q_BHNCK.size(0), heads = in.transported_q_BHNCK.size(1);
    const int64_t num_chunks = in.transported_q_BHNCK.size(2), num_slots = in.state_move_BHNSS.size(3);
    const int64_t key_dim = in.transported_q_BHNCK.size(4), value_dim = in.source_v_BHNCV.size(4);

    const at::Tensor d_inter_BHNCV =
        grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(in.source_v_BHNCV);
    // G: the gradient of the states after the chunk being undone.
    at::Tensor g_BHSKV =
        grad_outputs[1].defined() ? grad_outputs[1] : at::zeros_like(start_states_BHNSKV.select(2, 0));
    std::vector<at::Tensor> d_q(num_chunks), d_read_weight(num_chunks), d_k_to_end(num_chunks),
        d_w(num_chunks), d_t_inverse(num_chunks), d_source_v(num_chunks), d_chunk_decay(num_chunks);
    for (int64_t n = num_chunks - 1; n >= 0; --n) {
      const at::Tensor x_BHSKV = start_states_BHNSKV.select(2, n);
      const at::Tensor k_to_end_BH1CK = in.k_to_end_BHNCK.select(2, n).unsqueeze(2);
      const at::Tensor q_BH1CK = in.transported_q_BHNCK.select(2, n).unsqueeze(2);

      // next: X' = M Y + K̃ᵀ Z
      const at::Tensor d_carried_BHSKV = in.state_move_BHNSS.select(2, n)
                                             .transpose(-1, -2)
                                             .matmul(g_BHSKV.reshape({batch, heads, num_slots, -1}))
                                             .view({batch, heads, num_slots, key_dim, value_dim});
      const at::Tensor d_writes_BHSCV = k_to_end_BH1CK.matmul(g_BHSKV);
      at::Tensor d_k_to_end_BHCK = chunk_writes(in, n).matmul(g_BHSKV.transpose(-1, -2)).sum(2);

      // carry: Y = e X − K̃ᵀ (W X)
      at::Tensor d_x_BHSKV = in.chunk_decay_BHN.select(2, n).view({batch, heads, 1, 1, 1}) * d_carried_BHSKV;
      d_chunk_decay[n] = (x_BHSKV * d_carried_BHSKV).sum({2, 3, 4});
      if (delta_rule) {
        const at::Tensor w_BH1CK = in.w_BHNCK.select(2, n).unsqueeze(2);
        const at::Tensor predicted_BHSCV = w_BH1CK.matmul(x_BHSKV);
        const at::Tensor d_predicted_BHSCV = -k_to_end_BH1CK.matmul(d_carried_BHSKV);
        d_k_to_end_BHCK = d_k_to_end_BHCK - predicted_BHSCV.matmul(d_carried_BHSKV.transpose(-1, -2)).sum(2);
        d_w[n] = d_predicted_BHSCV.matmul(x_BHSKV.transpose(-1, -2)).sum(2);
        d_x_BHSKV = d_x_BHSKV + w_BH1CK.transpose(-1, -2).matmul(d_predicted_BHSCV);
      }
      d_k_to_end[n] = d_k_to_end_BHCK;

      // reads: inter = Σ_s w_s ⊙ (q̃ X_s)
      const at::Tensor d_inter_BH1CV = d_inter_BHNCV.select(2, n).unsqueeze(2);
      const at::Tensor d_reads_BHSCV =
          in.read_weight_BHNCS.select(2, n).transpose(-1, -2).unsqueeze(-1) * d_inter_BH1CV;
      d_read_weight[n] = (q_BH1CK.matmul(x_BHSKV) * d_inter_BH1CV).sum(-1).transpose(-1, -2);
      d_q[n] = d_reads_BHSCV.matmul(x_BHSKV.transpose(-1, -2)).sum(2);
      d_x_BHSKV = d_x_BHSKV + q_BH1CK.transpose(-1, -2).matmul(d_reads_BHSCV);

      // writes: Z_r = T (m_r ⊙ v)
      const at::Tensor token_move_BHSC1 = in.token_move_BHNSC.select(2, n).unsqueeze(-1);
      at::Tensor d_landed_BHSCV = d_writes_BHSCV;
      if (delta_rule) {
        const at::Tensor landed_BHSCV = token_move_BHSC1 * in.source_v_BHNCV.select(2, n).unsqueeze(2);
        d_t_inverse[n] = d_writes_BHSCV.matmul(landed_BHSCV.transpose(-1, -2)).sum(2);
        d_landed_BHSCV =
            in.t_inverse_BHNCC.select(2, n).unsqueeze(2).transpose(-1, -2).matmul(d_writes_BHSCV);
      }
      d_source_v[n] = (token_move_BHSC1 * d_landed_BHSCV).sum(2);
      g_BHSKV = d_x_BHSKV;
    }
    const auto stacked = [](const std::vector<at::Tensor>& per_chunk) { return at::stack(per_chunk, 2); };
    variable_list grads(kNumInputs);
    grads[kQ] = stacked(d_q);
    grads[kReadWeight] = stacked(d_read_weight);
    grads[kKToEnd] = stacked(d_k_to_end);
    if (delta_rule) {
      grads[kW] = stacked(d_w);
      grads[kTInverse] = stacked(d_t_inverse);
    }
    grads[kSourceV] = stacked(d_source_v);
    grads[kChunkDecay] = stacked(d_chunk_decay);
    grads.push_back(at::Tensor());  // delta_rule
    return grads;
  }
};

}  // namespace

SlotPassResult slot_pass(const SlotPassInputs& in, bool fused) {
  if (!fused) return run_loop(in, /*keep_states=*/false).result;
  // The function computes without autocast, so its inputs (some from autocast matmuls) share one dtype;
  // absent W and T travel as empty placeholders, since autograd functions take defined tensors.
  at::ScalarType dtype = at::kFloat;
  for (const at::Tensor& x : {in.transported_q_BHNCK, in.read_weight_BHNCS, in.k_to_end_BHNCK, in.w_BHNCK,
                              in.t_inverse_BHNCC, in.source_v_BHNCV, in.chunk_decay_BHN}) {
    if (x.defined()) dtype = at::promote_types(dtype, x.scalar_type());
  }
  const at::Tensor placeholder = at::empty({0}, in.transported_q_BHNCK.options().dtype(dtype));
  const auto in_dtype = [&](const at::Tensor& x) { return x.defined() ? x.to(dtype) : placeholder; };
  const variable_list inputs = {in_dtype(in.transported_q_BHNCK), in_dtype(in.read_weight_BHNCS),
                                in_dtype(in.k_to_end_BHNCK),      in_dtype(in.w_BHNCK),
                                in_dtype(in.t_inverse_BHNCC),     in_dtype(in.source_v_BHNCV),
                                in_dtype(in.chunk_decay_BHN),     in_dtype(in.state_move_BHNSS),
                                in_dtype(in.token_move_BHNSC)};
  const variable_list out = SlotPassFunction::apply(at::TensorList(inputs), in.w_BHNCK.defined());
  return {out[0], out[1]};
}

}  // namespace dla::memory
