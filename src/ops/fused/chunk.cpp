// The fused chunkwise op as an autograd function: the forward of the LibTorch-op path with the state pass
// from fused::state_pass_forward (and, where chunk_stages_apply, the stages around it from the per-chunk
// kernels), and the backward written out (docs/ops/fused.md) so that autograd keeps none of its
// intermediates: the backward keeps the inputs, the chunk-start states and the written values, and
// recomputes the other chunk terms (where chunk_gradients_apply, all on the per-chunk CUDA kernels).
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, M chunks, C chunk length.
#include <utility>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/fused.h"
#include "dla/ops/tf32_scope.h"

namespace dla::ops::fused {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The inputs cut into chunks in the compute dtype, with the gate terms every stage uses.
struct ChunkTerms {
  at::Tensor q_BHMCK, k_BHMCK, v_BHMCV, beta_BHMC;
  at::Tensor gamma_BHMC;   ///< chunk-local cumsum of the log gates
  at::Tensor decay_BHMCC;  ///< exp(gamma_i − gamma_j), j <= i
  at::Tensor to_end_BHMC;  ///< exp(gamma_last − gamma): decay from each token to its chunk's end
  at::Tensor k_to_end_BHMCK;
  at::Tensor chunk_decay_BHM;   ///< exp(gamma_last)
  at::Tensor kk_BHMCC;          ///< (k kᵀ) ⊙ decay (delta rule only)
  at::Tensor a_BHMCC;           ///< strictly lower beta_i (k kᵀ ⊙ decay)_ij (delta rule only)
  at::Tensor inverse_BHMCC;     ///< (I + A)⁻¹ (delta rule only)
  at::Tensor w_BHMCK, u_BHMCV;  ///< the WY representation (delta rule only); u is v otherwise
};

/// The chunked inputs and the C × C terms that the LibTorch-op forward and the backward read, from gamma.
void add_pair_terms(ChunkTerms& t, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& beta, int64_t chunk_size, at::ScalarType dtype) {
  t.q_BHMCK = common::to_chunks(q, chunk_size, dtype);
  t.k_BHMCK = common::to_chunks(k, chunk_size, dtype);
  t.v_BHMCV = common::to_chunks(v, chunk_size, dtype);
  t.decay_BHMCC = common::decay_matrix(t.gamma_BHMC);
  t.to_end_BHMC = (t.gamma_BHMC.select(-1, -1).unsqueeze(-1) - t.gamma_BHMC).exp();
  if (beta.defined()) {
    t.beta_BHMC = common::to_chunks(beta, chunk_size, dtype);
    t.kk_BHMCC = t.k_BHMCK.matmul(t.k_BHMCK.transpose(-1, -2)) * t.decay_BHMCC;
    t.a_BHMCC = (t.beta_BHMC.unsqueeze(-1) * t.kk_BHMCC).tril(-1);
  }
}

/// Every chunk term as LibTorch ops.
ChunkTerms aten_chunk_terms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& g, const at::Tensor& beta, int64_t chunk_size,
                            at::ScalarType dtype) {
  ChunkTerms t;
  t.gamma_BHMC = common::cumsum_gates(common::to_chunks(g, chunk_size, dtype));
  add_pair_terms(t, q, k, v, beta, chunk_size, dtype);
  t.k_to_end_BHMCK = t.k_BHMCK * t.to_end_BHMC.unsqueeze(-1);
  t.chunk_decay_BHM = t.gamma_BHMC.select(-1, -1).exp();
  if (beta.defined()) {
    // gdn::wy_repr's terms, with (I + A)⁻¹ formed once so that both directions are matmuls.
    const at::Tensor beta_BHMC1 = t.beta_BHMC.unsqueeze(-1);
    t.inverse_BHMCC = unit_lower_inverse(t.a_BHMCC);
    t.w_BHMCK = t.inverse_BHMCC.matmul(t.k_BHMCK * (beta_BHMC1 * t.gamma_BHMC.exp().unsqueeze(-1)));
    t.u_BHMCV = t.inverse_BHMCC.matmul(t.v_BHMCV * beta_BHMC1);
  } else {
    t.u_BHMCV = t.v_BHMCV;
  }
  return t;
}

/// The state-pass terms from prepare_chunks' kernel; `with_pair_terms` adds what only the LibTorch-op
/// backward reads. Without them, k_to_end and w are bf16 where the state pass's bf16 kernels take them.
ChunkTerms kernel_chunk_terms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& g, const at::Tensor& beta, int64_t chunk_size,
                              at::ScalarType dtype, bool with_pair_terms) {
  const bool bf16_state = !with_pair_terms && bf16_state_pass_applies(q, k, v, dtype, chunk_size);
  PreparedChunks prepared = prepare_chunks(k, v, g, beta, chunk_size, {.bf16_state_operands = bf16_state});
  ChunkTerms t;
  t.gamma_BHMC = std::move(prepared.gamma_BHMC);
  t.k_to_end_BHMCK = std::move(prepared.k_to_end_BHMCK);
  t.chunk_decay_BHM = std::move(prepared.chunk_decay_BHM);
  t.w_BHMCK = std::move(prepared.w_BHMCK);
  t.inverse_BHMCC = std::move(prepared.inverse_BHMCC);
  t.u_BHMCV = std::move(prepared.u_BHMCV);
  if (with_pair_terms) add_pair_terms(t, q, k, v, beta, chunk_size, dtype);
  return t;
}

/// sum over the last dim of a * b.
at::Tensor rowwise_dot(const at::Tensor& a, const at::Tensor& b) {
  return (a * b).sum(-1);
}

/// The gradients a log-decay matrix term X ⊙ exp(gamma_i − gamma_j) hands to gamma, from dX ⊙ X.
at::Tensor pair_gamma_gradient(const at::Tensor& grad_times_value_BHMCC) {
  return grad_times_value_BHMCC.sum(-1) - grad_times_value_BHMCC.sum(-2);
}

/// The backward on the per-chunk CUDA kernels (chunk_gradients_apply): prepare_chunks again (without u,
/// which the forward's state pass already turned into the saved written values, and from the forward's T
/// where it was kept), chunk_value_gradient, the state pass backward and chunk_gradients. Gradients in the
/// inputs' dtypes.
variable_list kernel_backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& g, const at::Tensor& beta, const at::Tensor& initial_state,
                              const at::Tensor& states_BHMKV, const at::Tensor& v_new_BHMCV,
                              const at::Tensor& forward_inverse_BHMCC, const at::Tensor& d_out_or_undefined,
                              const at::Tensor& d_final_or_undefined, double scale, int64_t chunk_size) {
  // The per-chunk kernels compute in float32 (chunk_gradients_apply).
  const PreparedChunks prepared =
      prepare_chunks(k, v, g, beta, chunk_size,
                     {.written_values = false,
                      .inverse = forward_inverse_BHMCC,
                      .bf16_state_operands = bf16_state_pass_applies(q, k, v, at::kFloat, chunk_size)});
  const at::Tensor d_out_BTHV = d_out_or_undefined.defined()
                                    ? d_out_or_undefined
                                    : at::zeros({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  const ValueGradient value = chunk_value_gradient(q, k, d_out_BTHV, prepared.gamma_BHMC, scale);
  const at::Tensor d_final_BHKV = d_final_or_undefined.defined()
                                      ? d_final_or_undefined.to(at::kFloat)
                                      : at::zeros_like(states_BHMKV.select(2, 0), at::kFloat);
  const StatePassBackward back =
      state_pass_backward(value.q_read_BHMCK, value.d_out_BHMCV, value.d_v_new_intra_BHMCV,
                          prepared.k_to_end_BHMCK, prepared.w_BHMCK, prepared.chunk_decay_BHM, d_final_BHKV);
  const ChunkGradients grads =
      chunk_gradients(q, k, v, beta, prepared.gamma_BHMC, prepared.inverse_BHMCC, states_BHMKV, v_new_BHMCV,
                      value.d_out_BHMCV, back.d_states_next_BHMKV, back.d_v_new_BHMCV, scale);
  return {grads.d_q,
          grads.d_k,
          grads.d_v,
          grads.d_g.to(g.scalar_type()),
          beta.defined() ? grads.d_beta.to(beta.scalar_type()) : at::Tensor(),
          initial_state.defined() ? back.d_initial_state_BHKV.to(initial_state.scalar_type()) : at::Tensor(),
          at::Tensor(),
          at::Tensor(),
          at::Tensor(),
          at::Tensor()};
}

class ChunkFunction : public torch::autograd::Function<ChunkFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta_or_empty,
                               const at::Tensor& initial_state_or_empty, double scale, int64_t chunk_size,
                               bool delta_rule, bool has_initial_state) {
    // The op computes in its own dtype whatever autocast would pick for the matmuls.
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::Tensor beta = delta_rule ? beta_or_empty : at::Tensor();
    const at::Tensor initial_state = has_initial_state ? initial_state_or_empty : at::Tensor();
    const Tf32Scope tf32(tf32_suits(q));
    const at::ScalarType dtype = common::compute_dtype({q, k, v, g, beta, initial_state});
    const bool stage_kernels = chunk_stages_apply(q, k, v, dtype, chunk_size);
    const ChunkTerms t = stage_kernels ? kernel_chunk_terms(q, k, v, g, beta, chunk_size, dtype, false)
                                       : aten_chunk_terms(q, k, v, g, beta, chunk_size, dtype);
    const StatePassForward pass =
        state_pass_forward(t.k_to_end_BHMCK, t.u_BHMCV, t.w_BHMCK, t.chunk_decay_BHM,
                           common::initial_state_or_zeros(initial_state, k, v, dtype));
    // The chunk-start states and written values are kept (the state pass is the op's sequential part), and
    // the kernels' T = (I + A)⁻¹ (C × C per chunk; forming it is most of chunk_prepare); everything else the
    // backward needs is recomputed from the inputs.
    const at::Tensor kept_inverse = stage_kernels && delta_rule ? t.inverse_BHMCC : at::Tensor();
    ctx->save_for_backward({q, k, v, g, beta_or_empty, initial_state_or_empty, pass.states_BHMKV,
                            pass.v_new_BHMCV, kept_inverse});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->saved_data["delta_rule"] = delta_rule;
    ctx->saved_data["has_initial_state"] = has_initial_state;
    if (stage_kernels) {
      return {chunk_outputs(q, k, t.gamma_BHMC, pass.states_BHMKV, pass.v_new_BHMCV, scale),
              pass.final_state_BHKV};
    }
    const at::Tensor out_BHMCV = common::chunk_output(t.q_BHMCK, t.k_BHMCK, pass.v_new_BHMCV, t.gamma_BHMC,
                                                      t.decay_BHMCC, pass.states_BHMKV, scale);
    return {common::from_chunks(out_BHMCV, q.size(1)).to(q.scalar_type()), pass.final_state_BHKV};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &g = saved[3];
    const at::Tensor beta = ctx->saved_data["delta_rule"].toBool() ? saved[4] : at::Tensor();
    const at::Tensor initial_state = ctx->saved_data["has_initial_state"].toBool() ? saved[5] : at::Tensor();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t chunk_size = ctx->saved_data["chunk_size"].toInt();
    const Tf32Scope tf32(tf32_suits(q));
    const at::ScalarType dtype = common::compute_dtype({q, k, v, g, beta, initial_state});
    const int64_t num_tokens = q.size(1);
    if (chunk_gradients_apply(q, k, v, dtype, chunk_size)) {
      return kernel_backward(q, k, v, g, beta, initial_state, saved[6], saved[7], saved[8], grad_outputs[0],
                             grad_outputs[1], scale, chunk_size);
    }
    // The bf16 state pass keeps the states and written values in bf16; the ops below compute in dtype.
    const at::Tensor states_BHMKV = saved[6].to(dtype);
    const at::Tensor v_new_BHMCV = saved[7].to(dtype);

    const ChunkTerms t = chunk_stages_apply(q, k, v, dtype, chunk_size)
                             ? kernel_chunk_terms(q, k, v, g, beta, chunk_size, dtype, true)
                             : aten_chunk_terms(q, k, v, g, beta, chunk_size, dtype);

    const at::Tensor d_out_BHMCV = grad_outputs[0].defined()
                                       ? common::to_chunks(grad_outputs[0], chunk_size, dtype)
                                       : at::zeros_like(t.u_BHMCV);
    const at::Tensor d_final_BHKV =
        grad_outputs[1].defined() ? grad_outputs[1].to(dtype) : at::zeros_like(states_BHMKV.select(2, 0));

    // Output: O = scale · (q_read S + P v_new) with q_read = q ⊙ exp(gamma), P = (q kᵀ) ⊙ decay.
    const at::Tensor gamma_exp_BHMC = t.gamma_BHMC.exp();
    const at::Tensor q_read_BHMCK = t.q_BHMCK * (gamma_exp_BHMC * scale).unsqueeze(-1);
    const at::Tensor p_BHMCC = t.q_BHMCK.matmul(t.k_BHMCK.transpose(-1, -2)) * t.decay_BHMCC;
    const at::Tensor d_v_new_intra_BHMCV =
        common::scaled_matmul(p_BHMCC.transpose(-1, -2), d_out_BHMCV, scale);
    const StatePassBackward back =
        state_pass_backward(q_read_BHMCK, d_out_BHMCV, d_v_new_intra_BHMCV, t.k_to_end_BHMCK, t.w_BHMCK,
                            t.chunk_decay_BHM, d_final_BHKV);

    const at::Tensor d_q_read_BHMCK = d_out_BHMCV.matmul(states_BHMKV.transpose(-1, -2));
    at::Tensor d_q_BHMCK = d_q_read_BHMCK * (gamma_exp_BHMC * scale).unsqueeze(-1);
    at::Tensor d_gamma_BHMC = rowwise_dot(d_q_read_BHMCK, q_read_BHMCK);
    const at::Tensor d_p_BHMCC = common::scaled_matmul(d_out_BHMCV, v_new_BHMCV.transpose(-1, -2), scale);
    const at::Tensor d_qk_BHMCC = d_p_BHMCC * t.decay_BHMCC;
    d_q_BHMCK = common::scaled_matmul(d_qk_BHMCC, t.k_BHMCK, 1.0, d_q_BHMCK);
    at::Tensor d_k_BHMCK = d_qk_BHMCC.transpose(-1, -2).matmul(t.q_BHMCK);
    d_gamma_BHMC = d_gamma_BHMC + pair_gamma_gradient(d_p_BHMCC * p_BHMCC);

    // State hand-over: S_{m+1} = exp(gamma_last) S_m + (k ⊙ to_end)ᵀ v_new.
    const at::Tensor d_k_to_end_BHMCK = v_new_BHMCV.matmul(back.d_states_next_BHMKV.transpose(-1, -2));
    d_k_BHMCK = d_k_BHMCK + d_k_to_end_BHMCK * t.to_end_BHMC.unsqueeze(-1);
    const at::Tensor d_to_end_BHMC = rowwise_dot(d_k_to_end_BHMCK, t.k_to_end_BHMCK);
    d_gamma_BHMC = d_gamma_BHMC - d_to_end_BHMC;
    const at::Tensor d_gamma_last_BHM =
        d_to_end_BHMC.sum(-1) + t.chunk_decay_BHM * (states_BHMKV * back.d_states_next_BHMKV).sum({-1, -2});

    at::Tensor d_v_BHMCV, d_beta_BHMC;
    if (beta.defined()) {
      // v_new = u − w S with [w u] = (I + A)⁻¹ [beta exp(gamma) k, beta v], so
      // d[kb vb] = (I + A)⁻ᵀ d[w u] and dA = −(dkb wᵀ + dvb uᵀ) below the diagonal.
      const at::Tensor d_w_BHMCK =
          common::scaled_matmul(back.d_v_new_BHMCV, states_BHMKV.transpose(-1, -2), -1.0);
      const at::Tensor beta_BHMC1 = t.beta_BHMC.unsqueeze(-1);
      const at::Tensor inverse_t_BHMCC = t.inverse_BHMCC.transpose(-1, -2);
      const at::Tensor d_kb_BHMCK = inverse_t_BHMCC.matmul(d_w_BHMCK);
      const at::Tensor d_vb_BHMCV = inverse_t_BHMCC.matmul(back.d_v_new_BHMCV);
      const at::Tensor minus_d_kb_w_BHMCC =
          common::scaled_matmul(d_kb_BHMCK, t.w_BHMCK.transpose(-1, -2), -1.0);
      const at::Tensor d_a_BHMCC =
          common::scaled_matmul(d_vb_BHMCV, t.u_BHMCV.transpose(-1, -2), -1.0, minus_d_kb_w_BHMCC).tril(-1);
      const at::Tensor kb_scale_BHMC = t.beta_BHMC * gamma_exp_BHMC;
      d_k_BHMCK = d_k_BHMCK + d_kb_BHMCK * kb_scale_BHMC.unsqueeze(-1);
      const at::Tensor d_kb_k_BHMC = rowwise_dot(d_kb_BHMCK, t.k_BHMCK) * gamma_exp_BHMC;
      d_gamma_BHMC = d_gamma_BHMC + d_kb_k_BHMC * t.beta_BHMC;
      d_v_BHMCV = d_vb_BHMCV * beta_BHMC1;
      d_beta_BHMC = d_kb_k_BHMC + rowwise_dot(d_vb_BHMCV, t.v_BHMCV) + (d_a_BHMCC * t.kk_BHMCC).sum(-1);
      const at::Tensor d_kk_BHMCC = beta_BHMC1 * d_a_BHMCC * t.decay_BHMCC;
      // k kᵀ is symmetric in its two k's: both sides of the pair gradient go through one matmul.
      d_k_BHMCK = common::scaled_matmul(d_kk_BHMCC + d_kk_BHMCC.transpose(-1, -2), t.k_BHMCK, 1.0, d_k_BHMCK);
      d_gamma_BHMC = d_gamma_BHMC + pair_gamma_gradient(d_a_BHMCC * t.a_BHMCC);
    } else {
      d_v_BHMCV = back.d_v_new_BHMCV;
    }

    // gamma is the chunk-local cumsum of g, so g gets the reverse cumsum of gamma's gradient.
    d_gamma_BHMC.select(-1, -1).add_(d_gamma_last_BHM);
    const at::Tensor d_g_BHMC = d_gamma_BHMC.flip(-1).cumsum(-1).flip(-1);

    const auto unchunk = [&](const at::Tensor& x, const at::Tensor& like) {
      return common::from_chunks(x, num_tokens).to(like.scalar_type());
    };
    return {
        unchunk(d_q_BHMCK, q),
        unchunk(d_k_BHMCK, k),
        unchunk(d_v_BHMCV, v),
        unchunk(d_g_BHMC, g),
        beta.defined() ? unchunk(d_beta_BHMC, beta) : at::Tensor(),
        initial_state.defined() ? back.d_initial_state_BHKV.to(initial_state.scalar_type()) : at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor()};
  }
};

}  // namespace

OpResult chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
               const at::Tensor& beta, double scale, const at::Tensor& initial_state, int64_t chunk_size) {
  const char* op = beta.defined() ? "gdn::chunk" : "ssd::chunk";
  common::check_inputs(op, q, k, v, g, initial_state);
  if (beta.defined()) common::check_token_gate(op, "beta", beta, q);
  TORCH_CHECK(chunk_size >= 1, op, ": chunk_size must be at least 1, got ", chunk_size);
  // Autograd functions take defined tensors only: absent ones travel as empty placeholders.
  const auto or_empty = [&](const at::Tensor& x) { return x.defined() ? x : at::empty({0}, q.options()); };
  const variable_list result =
      ChunkFunction::apply(q, k, v, g, or_empty(beta), or_empty(initial_state), scale, chunk_size,
                           beta.defined(), initial_state.defined());
  return {result[0], result[1]};
}

}  // namespace dla::ops::fused
