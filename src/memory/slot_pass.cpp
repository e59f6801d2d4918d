// The multi-state slot pass: the loop (under autograd, or as the fused function's forward), the fused
// function's backward, and the dispatch to the CUDA kernels (slot_pass.cu). With X_s the slot states at a
// chunk's start, per chunk:
//   reads   R_s = q̃ X_s,                  inter = Σ_s w_s ⊙ R_s      (w: the read weights, per query)
//   carry   Y_s = e X_s − K̃ᵀ (W X_s)     (e X_s for SSD)
//   writes  Z_r = T (m_r ⊙ v)             (m_r ⊙ v for SSD; m_r: the tokens landing in slot r)
//   next    X'_r = Σ_s M[r, s] Y_s + K̃ᵀ Z_r
// The carry is linear, so with X̄_r = Σ_s M[r, s] X_s (the states moved first) the next states are also
// X'_r = e X̄_r + K̃ᵀ Δ_r with Δ_r = Z_r − W X̄_r: one single-state step per slot. The backward and the
// kernels use that form.
// Shapes: B batch, H heads, N chunks, C chunk length, K key dim, V value dim, S slots.
#include "dla/memory/slot_pass.h"

#include <initializer_list>
#include <vector>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/record_function.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/kernel_buffers.h"
#include "dla/ops/tf32_scope.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "slot_gradients_kernels.h"
#include "slot_pass_kernels.h"
#include "slot_reads_kernel.h"
#endif

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

/// The forward's outputs with the slot states at each chunk's start, which the backward keeps.
struct KeptForward {
  SlotPassResult result;
  at::Tensor start_states_BHNSKV;
  at::Tensor live_slots_BHN;  ///< the CUDA kernels' live-slot masks (int32 bits); undefined for the loop
  /// The bf16 kernels' copies of K̃ and W (undefined elsewhere), which their backward takes too.
  at::Tensor k_to_end_bf16_BHNCK, w_bf16_BHNCK;
};

/// The sequential part of the backward: G, the gradient of the slot states after each chunk, and dΔ, the
/// gradient of what each chunk writes to each slot.
struct StateGradients {
  at::Tensor d_end_states_BHNSKV;
  at::Tensor d_written_BHNSCV;
};

KeptForward forward_loop(const SlotPassInputs& in) {
  LoopResult loop = run_loop(in, /*keep_states=*/true);
  return {loop.result, at::stack(loop.start_states_BHSKV, /*dim=*/2), at::Tensor(), at::Tensor(),
          at::Tensor()};
}

/// With X̄ = M X the states moved to their slots, chunk by chunk from the last:
///   dΔ = K̃ G,   dX̄ = e G − Wᵀ dΔ,   dX = Mᵀ dX̄ + q̃ᵀ (w ⊙ d_inter),   and the chunk before gets G = dX.
StateGradients state_gradients_loop(const SlotPassInputs& in, const at::Tensor& d_inter_BHNCV,
                                    const at::Tensor& d_final_BHSKV) {
  const int64_t batch = d_final_BHSKV.size(0), heads = d_final_BHSKV.size(1);
  const int64_t num_slots = d_final_BHSKV.size(2), key_dim = d_final_BHSKV.size(3);
  const int64_t value_dim = d_final_BHSKV.size(4), num_chunks = in.transported_q_BHNCK.size(2);
  std::vector<at::Tensor> d_end_BHSKV(num_chunks), d_written_BHSCV(num_chunks);
  at::Tensor g_BHSKV = d_final_BHSKV;
  for (int64_t n = num_chunks - 1; n >= 0; --n) {
    d_end_BHSKV[n] = g_BHSKV;
    d_written_BHSCV[n] = in.k_to_end_BHNCK.select(2, n).unsqueeze(2).matmul(g_BHSKV);
    at::Tensor d_moved_BHSKV = in.chunk_decay_BHN.select(2, n).view({batch, heads, 1, 1, 1}) * g_BHSKV;
    if (in.w_BHNCK.defined()) {
      d_moved_BHSKV =
          d_moved_BHSKV - in.w_BHNCK.select(2, n).unsqueeze(2).transpose(-1, -2).matmul(d_written_BHSCV[n]);
    }
    const at::Tensor d_start_BHSX = in.state_move_BHNSS.select(2, n).transpose(-1, -2).matmul(
        d_moved_BHSKV.reshape({batch, heads, num_slots, -1}));
    const at::Tensor weighted_d_inter_BHSCV =
        in.read_weight_BHNCS.select(2, n).transpose(-1, -2).unsqueeze(-1) *
        d_inter_BHNCV.select(2, n).unsqueeze(2);
    g_BHSKV =
        d_start_BHSX.view({batch, heads, num_slots, key_dim, value_dim}) +
        in.transported_q_BHNCK.select(2, n).unsqueeze(2).transpose(-1, -2).matmul(weighted_d_inter_BHSCV);
  }
  return {at::stack(d_end_BHSKV, /*dim=*/2), at::stack(d_written_BHSCV, /*dim=*/2)};
}

#if defined(DLA_WITH_CUDA)
kernels::SlotPassDims dims_of(const SlotPassInputs& in) {
  const at::Tensor& q = in.transported_q_BHNCK;
  return {q.size(0) * q.size(1),      q.size(2), q.size(3), q.size(4), in.source_v_BHNCV.size(4),
          in.state_move_BHNSS.size(3)};
}
#endif

}  // namespace

bool slot_pass_uses_cuda_kernels([[maybe_unused]] const SlotPassInputs& in) {
#if defined(DLA_WITH_CUDA)
  const at::Tensor& q = in.transported_q_BHNCK;
  if (!q.is_cuda() || q.scalar_type() != at::kFloat || !ops::tf32_allowed()) return false;
  const c10::cuda::CUDAGuard device_guard(q.device());
  return kernels::supports_slot_pass(dims_of(in));
#else
  return false;
#endif
}

namespace {

#if defined(DLA_WITH_CUDA)
/// A float32 kernel buffer as a contiguous bf16 copy (the bf16 kernels' operands); undefined stays undefined.
at::Tensor bf16_buffer(const at::Tensor& x) {
  return x.defined() ? ops::kernel_buffer(x.to(at::kBFloat16)) : x;
}

/// The bf16 copy of x that the kernels read: the producer's where it wrote one, else converted here.
at::Tensor bf16_operand(const at::Tensor& copy, const at::Tensor& x) {
  return copy.defined() ? ops::kernel_buffer(copy) : bf16_buffer(x);
}

/// The reads of every chunk from its start states, inter_c = Σ_s w_cs q̃_c X_s: on the reads kernel where it
/// runs the dims, else as one batched matmul with the slots and keys as one depth of S·K.
at::Tensor start_state_reads(const SlotPassInputs& in, const at::Tensor& start_states_BHNSKV,
                             const at::Tensor& live_slots_BHN, const kernels::SlotPassDims& dims) {
  if (!kernels::supports_slot_reads(dims)) {
    const at::Tensor weighted_q_BHNCX =
        (in.read_weight_BHNCS.unsqueeze(-1) * in.transported_q_BHNCK.unsqueeze(-2)).flatten(-2);
    return weighted_q_BHNCX.matmul(start_states_BHNSKV.flatten(3, 4));
  }
  const at::Tensor q = ops::kernel_buffer(in.transported_q_BHNCK),
                   read_weight = ops::kernel_buffer(in.read_weight_BHNCS);
  const at::Tensor inter_BHNCV =
      at::empty({q.size(0), q.size(1), dims.chunks, dims.chunk_size, dims.value_dim}, q.options());
  const char* error = kernels::slot_reads(
      {q.data_ptr<float>(), read_weight.data_ptr<float>(), start_states_BHNSKV.data_ptr(),
       inter_BHNCV.data_ptr<float>(), reinterpret_cast<const unsigned*>(live_slots_BHN.data_ptr<int>()),
       start_states_BHNSKV.scalar_type() == at::kBFloat16},
      dims, ops::current_cuda_stream(q));
  TORCH_CHECK(error == nullptr, "memory slot pass reads: CUDA kernel failed: ", error);
  return inter_BHNCV;
}
#endif

KeptForward forward_kernel([[maybe_unused]] const SlotPassInputs& in) {
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(in.transported_q_BHNCK.device());
  const kernels::SlotPassDims dims = dims_of(in);
  const at::Tensor k_to_end = ops::kernel_buffer(in.k_to_end_BHNCK), w = ops::kernel_buffer(in.w_BHNCK),
                   t_inverse = ops::kernel_buffer(in.t_inverse_BHNCC),
                   source_v = ops::kernel_buffer(in.source_v_BHNCV),
                   chunk_decay = ops::kernel_buffer(in.chunk_decay_BHN),
                   state_move = ops::kernel_buffer(in.state_move_BHNSS),
                   token_move = ops::kernel_buffer(in.token_move_BHNSC);
  const int64_t B = k_to_end.size(0), H = k_to_end.size(1), N = dims.chunks, K = dims.key_dim,
                V = dims.value_dim, S = dims.slots;
  // The start states of dead slots stay unset, and all of them may be bf16, where every reader of them is a
  // kernel (which skips dead slots and takes bf16).
  const bool write_dead_slots =
      !kernels::supports_slot_reads(dims) || !kernels::supports_slot_gradients(dims);
  const bool compact = in.compact_states && !write_dead_slots;
  const at::Tensor start_states_BHNSKV =
      at::empty({B, H, N, S, K, V}, k_to_end.options().dtype(compact ? at::kBFloat16 : at::kFloat));
  const at::Tensor final_states_BHSKV = at::empty({B, H, S, K, V}, k_to_end.options());
  const at::Tensor live_slots_BHN = at::empty({B, H, N}, k_to_end.options().dtype(at::kInt));
  auto* live_slots = reinterpret_cast<unsigned*>(live_slots_BHN.data_ptr<int>());
  const char* error = nullptr;
  at::Tensor k_to_end_bf16, w_bf16;
  if (compact && kernels::supports_slot_pass_bf16(dims)) {
    k_to_end_bf16 = bf16_operand(in.bf16.k_to_end_BHNCK, k_to_end);
    w_bf16 = bf16_operand(in.bf16.w_BHNCK, w);
    const at::Tensor t_inverse_bf16 = bf16_operand(in.bf16.t_inverse_BHNCC, t_inverse),
                     source_v_bf16 = bf16_operand(in.bf16.source_v_BHNCV, source_v);
    error = kernels::slot_pass_forward_bf16(
        {k_to_end_bf16.data_ptr(), ops::untyped_data_or_null(w_bf16),
         ops::untyped_data_or_null(t_inverse_bf16), source_v_bf16.data_ptr(), chunk_decay.data_ptr<float>(),
         state_move.data_ptr<float>(), token_move.data_ptr<float>(), start_states_BHNSKV.data_ptr(),
         final_states_BHSKV.data_ptr<float>(), live_slots},
        dims, ops::current_cuda_stream(k_to_end));
  } else {
    error = kernels::slot_pass_forward(
        {k_to_end.data_ptr<float>(), ops::data_or_null(w), ops::data_or_null(t_inverse),
         source_v.data_ptr<float>(), chunk_decay.data_ptr<float>(), state_move.data_ptr<float>(),
         token_move.data_ptr<float>(), start_states_BHNSKV.data_ptr(), final_states_BHSKV.data_ptr<float>(),
         live_slots, write_dead_slots, compact},
        dims, ops::current_cuda_stream(k_to_end));
  }
  TORCH_CHECK(error == nullptr, "memory slot pass forward: CUDA kernel failed: ", error);
  return {{start_state_reads(in, start_states_BHNSKV, live_slots_BHN, dims), final_states_BHSKV},
          start_states_BHNSKV,
          live_slots_BHN,
          k_to_end_bf16,
          w_bf16};
#else
  TORCH_CHECK(false, "memory slot pass: dla was built without CUDA");
#endif
}

StateGradients state_gradients_kernel([[maybe_unused]] const SlotPassInputs& in,
                                      [[maybe_unused]] const at::Tensor& live_slots_BHN,
                                      [[maybe_unused]] const at::Tensor& d_inter_BHNCV,
                                      [[maybe_unused]] const at::Tensor& d_final_BHSKV,
                                      [[maybe_unused]] const at::Tensor& w_bf16_BHNCK,
                                      [[maybe_unused]] const at::Tensor& transported_q_bf16_BHNCK,
                                      [[maybe_unused]] bool compact) {
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(in.transported_q_BHNCK.device());
  const kernels::SlotPassDims dims = dims_of(in);
  const at::Tensor q = ops::kernel_buffer(in.transported_q_BHNCK),
                   read_weight = ops::kernel_buffer(in.read_weight_BHNCS),
                   k_to_end = ops::kernel_buffer(in.k_to_end_BHNCK), w = ops::kernel_buffer(in.w_BHNCK),
                   chunk_decay = ops::kernel_buffer(in.chunk_decay_BHN),
                   state_move = ops::kernel_buffer(in.state_move_BHNSS),
                   d_inter = ops::kernel_buffer(d_inter_BHNCV), d_final = ops::kernel_buffer(d_final_BHSKV);
  const int64_t B = q.size(0), H = q.size(1), N = dims.chunks, C = dims.chunk_size, K = dims.key_dim,
                V = dims.value_dim, S = dims.slots;
  StateGradients out{at::empty({B, H, N, S, K, V}, q.options().dtype(compact ? at::kBFloat16 : at::kFloat)),
                     at::empty({B, H, N, S, C, V}, q.options().dtype(compact ? at::kBFloat16 : at::kFloat))};
  const auto* live_slots = reinterpret_cast<const unsigned*>(live_slots_BHN.data_ptr<int>());
  const char* error = nullptr;
  if (compact && kernels::supports_slot_pass_bf16(dims)) {
    // The forward's bf16 copies of K̃ (in the input's place), W and q̃, where it kept them.
    const at::Tensor q_bf16 = bf16_operand(transported_q_bf16_BHNCK, q),
                     k_to_end_bf16 = bf16_buffer(k_to_end), w_bf16 = bf16_operand(w_bf16_BHNCK, w),
                     d_inter_bf16 = bf16_buffer(d_inter);
    error = kernels::slot_pass_backward_bf16(
        {q_bf16.data_ptr(), read_weight.data_ptr<float>(), k_to_end_bf16.data_ptr(),
         ops::untyped_data_or_null(w_bf16), chunk_decay.data_ptr<float>(), state_move.data_ptr<float>(),
         d_inter_bf16.data_ptr(), d_final.data_ptr<float>(), out.d_end_states_BHNSKV.data_ptr(),
         out.d_written_BHNSCV.data_ptr(), live_slots},
        dims, ops::current_cuda_stream(q));
  } else {
    error = kernels::slot_pass_backward(
        {q.data_ptr<float>(), read_weight.data_ptr<float>(), k_to_end.data_ptr<float>(), ops::data_or_null(w),
         chunk_decay.data_ptr<float>(), state_move.data_ptr<float>(), d_inter.data_ptr<float>(),
         d_final.data_ptr<float>(), out.d_end_states_BHNSKV.data_ptr(), out.d_written_BHNSCV.data_ptr(),
         live_slots, /*write_dead_slots=*/!kernels::supports_slot_gradients(dims), compact},
        dims, ops::current_cuda_stream(q));
  }
  TORCH_CHECK(error == nullptr, "memory slot pass backward: CUDA kernel failed: ", error);
  return out;
#else
  TORCH_CHECK(false, "memory slot pass: dla was built without CUDA");
#endif
}

/// X̄ = M X, the start states moved to their slots: on the move kernel where the pass runs on the CUDA
/// kernels, else as a batched matmul.
at::Tensor moved_states(const at::Tensor& state_move_BHNSS, const at::Tensor& x_BHNSKV,
                        [[maybe_unused]] bool cuda_kernels) {
#if defined(DLA_WITH_CUDA)
  const int64_t num_slots = x_BHNSKV.size(3), entries = x_BHNSKV.size(4) * x_BHNSKV.size(5);
  if (cuda_kernels && kernels::supports_slot_move(num_slots, entries)) {
    const c10::cuda::CUDAGuard device_guard(x_BHNSKV.device());
    const at::Tensor moves = ops::kernel_buffer(state_move_BHNSS.expand(
                         {x_BHNSKV.size(0), x_BHNSKV.size(1), x_BHNSKV.size(2), num_slots, num_slots})),
                     states = ops::kernel_buffer(x_BHNSKV);
    const at::Tensor moved_BHNSKV = at::empty_like(states);
    const char* error = kernels::move_slot_states(
        {moves.data_ptr<float>(), states.data_ptr<float>(), moved_BHNSKV.data_ptr<float>(),
         states.numel() / (num_slots * entries), num_slots, entries},
        ops::current_cuda_stream(states));
    TORCH_CHECK(error == nullptr, "memory slot move: CUDA kernel failed: ", error);
    return moved_BHNSKV;
  }
#endif
  return state_move_BHNSS.matmul(x_BHNSKV.flatten(-2)).view(x_BHNSKV.sizes());
}

/// The inputs' gradients from the states and their gradients, for all chunks at once. With X the start
/// states, X̄ = M X, G and dΔ from the sequential part, L_r = m_r ⊙ v and Δ_r = T L_r − W X̄_r:
///   dw[c, s] = ⟨d_inter_c, (q̃ X_s)_c⟩,  dq̃ = Σ_s (w_s ⊙ d_inter) X_sᵀ,  de = Σ_r ⟨X̄_r, G_r⟩,
///   dK̃ = Σ_r Δ_r G_rᵀ,  dW = −Σ_r dΔ_r X̄_rᵀ,  dT = Σ_r dΔ_r L_rᵀ,  dv = Σ_r m_r ⊙ (Tᵀ dΔ_r).
/// The per-slot states are the largest tensors of the pass, so each is read by products that take every
/// slot at once (the slots' rows stacked, [S·K, V]) rather than broadcasting a chunk operand over the slots:
///   P = d_inter [X_0ᵀ … X_{S−1}ᵀ] gives dw[c, s] = ⟨P_s[c], q̃[c]⟩ and dq̃[c] = Σ_s w[c, s] P_s[c];
///   de = Σ_{r,s} M[r, s] ⟨G_r, X_s⟩, the move matrix against the slots' Gram matrix;
///   Σ_r L_r G_rᵀ = Σ_r m_r ⊙ (v G_rᵀ), and with the delta rule dK̃ = T Σ_r L_r G_rᵀ − W Σ_r X̄_r G_rᵀ.
variable_list input_gradients_ops(const SlotPassInputs& in, const at::Tensor& start_states_BHNSKV,
                                  const StateGradients& state_grads, const at::Tensor& d_inter_BHNCV,
                                  bool cuda_kernels) {
  const at::Tensor& x_BHNSKV = start_states_BHNSKV;
  const at::Tensor& g_BHNSKV = state_grads.d_end_states_BHNSKV;
  const at::Tensor& d_written_BHNSCV = state_grads.d_written_BHNSCV;
  const int64_t S = x_BHNSKV.size(3), K = x_BHNSKV.size(4), V = x_BHNSKV.size(5);
  const int64_t C = in.transported_q_BHNCK.size(3);
  const auto shape = [&](std::initializer_list<int64_t> tail) {
    std::vector<int64_t> out(x_BHNSKV.sizes().begin(), x_BHNSKV.sizes().begin() + 3);
    out.insert(out.end(), tail);
    return out;
  };
  const at::Tensor x_rows_BHNXV = x_BHNSKV.view(shape({S * K, V}));
  const at::Tensor g_rows_BHNXV = g_BHNSKV.view(shape({S * K, V}));
  const at::Tensor w_t_BHNC1S = in.read_weight_BHNCS.unsqueeze(-2);
  const at::Tensor token_move_t_BHNC1S = in.token_move_BHNSC.transpose(-1, -2).unsqueeze(-2);

  variable_list grads(kNumInputs);
  const at::Tensor p_BHNCSK = d_inter_BHNCV.matmul(x_rows_BHNXV.transpose(-1, -2)).view(shape({C, S, K}));
  grads[kReadWeight] = p_BHNCSK.matmul(in.transported_q_BHNCK.unsqueeze(-1)).squeeze(-1);
  grads[kQ] = w_t_BHNC1S.matmul(p_BHNCSK).squeeze(-2);

  const at::Tensor gram_BHNSS =
      g_BHNSKV.view(shape({S, K * V})).matmul(x_BHNSKV.view(shape({S, K * V})).transpose(-1, -2));
  grads[kChunkDecay] = (gram_BHNSS * in.state_move_BHNSS).sum({-2, -1});

  // Σ_r L_r G_rᵀ: row c of v G_rᵀ counts for the slot token c lands in.
  const at::Tensor v_g_BHNCSK =
      in.source_v_BHNCV.matmul(g_rows_BHNXV.transpose(-1, -2)).view(shape({C, S, K}));
  const at::Tensor landed_g_BHNCK = token_move_t_BHNC1S.matmul(v_g_BHNCSK).squeeze(-2);
  at::Tensor d_landed_BHNSCV = d_written_BHNSCV;
  if (in.w_BHNCK.defined()) {
    const at::Tensor moved_x_BHNSKV = moved_states(in.state_move_BHNSS, x_BHNSKV, cuda_kernels);
    const at::Tensor moved_x_g_BHNKK = moved_x_BHNSKV.matmul(g_BHNSKV.transpose(-1, -2)).sum(3);
    grads[kKToEnd] = in.t_inverse_BHNCC.matmul(landed_g_BHNCK) - in.w_BHNCK.matmul(moved_x_g_BHNKK);
    grads[kW] = -d_written_BHNSCV.matmul(moved_x_BHNSKV.transpose(-1, -2)).sum(3);
    // dT[c, c'] = Σ_r m_r[c'] (dΔ_r vᵀ)[c, c'], with the slots' rows of dΔ stacked.
    const at::Tensor d_written_v_BHNSCC = d_written_BHNSCV.view(shape({S * C, V}))
                                              .matmul(in.source_v_BHNCV.transpose(-1, -2))
                                              .view(shape({S, C, C}));
    grads[kTInverse] = (d_written_v_BHNSCC * in.token_move_BHNSC.unsqueeze(-2)).sum(3);
    d_landed_BHNSCV = in.t_inverse_BHNCC.transpose(-1, -2).unsqueeze(3).matmul(d_written_BHNSCV);
  } else {
    grads[kKToEnd] = landed_g_BHNCK;
  }
  grads[kSourceV] = (in.token_move_BHNSC.unsqueeze(-1) * d_landed_BHNSCV).sum(3);
  return grads;
}

/// The same gradients from the gradient kernels (slot_gradients.cu), which read each slot's states once per
/// chunk and form dK̃ = T Σ_r L_r G_rᵀ − W Σ_r X̄_r G_rᵀ from the sums they hold.
variable_list input_gradients_kernel([[maybe_unused]] const SlotPassInputs& in,
                                     [[maybe_unused]] const at::Tensor& start_states_BHNSKV,
                                     [[maybe_unused]] const at::Tensor& live_slots_BHN,
                                     [[maybe_unused]] const StateGradients& state_grads,
                                     [[maybe_unused]] const at::Tensor& d_inter_BHNCV) {
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(start_states_BHNSKV.device());
  const kernels::SlotPassDims dims = dims_of(in);
  const at::IntArrayRef chunks_BHN = start_states_BHNSKV.sizes().slice(0, 3);
  const auto full = [&](const at::Tensor& x) {
    std::vector<int64_t> shape(chunks_BHN.begin(), chunks_BHN.end());
    shape.insert(shape.end(), x.sizes().end() - 2, x.sizes().end());
    return ops::kernel_buffer(x.expand(shape));
  };
  const bool delta_rule = in.w_BHNCK.defined();
  const at::Tensor x = ops::kernel_buffer(start_states_BHNSKV),
                   g = ops::kernel_buffer(state_grads.d_end_states_BHNSKV),
                   d_written = ops::kernel_buffer(state_grads.d_written_BHNSCV),
                   d_inter = ops::kernel_buffer(d_inter_BHNCV),
                   q = ops::kernel_buffer(in.transported_q_BHNCK),
                   read_weight = ops::kernel_buffer(in.read_weight_BHNCS),
                   source_v = ops::kernel_buffer(in.source_v_BHNCV),
                   t_inverse = ops::kernel_buffer(in.t_inverse_BHNCC), state_move = full(in.state_move_BHNSS),
                   token_move = full(in.token_move_BHNSC);
  const auto empty = [&](const at::Tensor& like) { return at::empty(like.sizes(), q.options()); };
  const at::Tensor d_read_weight = empty(read_weight), d_q = empty(q), d_k_to_end = empty(q),
                   d_source_v = empty(source_v), d_chunk_decay = at::empty(chunks_BHN, q.options());
  at::Tensor w, d_w, d_t_inverse;
  if (delta_rule) {
    w = ops::kernel_buffer(in.w_BHNCK);
    d_w = empty(q);
    d_t_inverse = empty(t_inverse);
  }
  const auto output = [](const at::Tensor& x) { return x.defined() ? x.data_ptr<float>() : nullptr; };
  const char* error =
      kernels::slot_pass_gradients({x.data_ptr(),
                                    g.data_ptr(),
                                    d_written.data_ptr(),
                                    d_inter.data_ptr<float>(),
                                    q.data_ptr<float>(),
                                    read_weight.data_ptr<float>(),
                                    source_v.data_ptr<float>(),
                                    ops::data_or_null(t_inverse),
                                    ops::data_or_null(w),
                                    state_move.data_ptr<float>(),
                                    token_move.data_ptr<float>(),
                                    d_read_weight.data_ptr<float>(),
                                    d_q.data_ptr<float>(),
                                    output(d_w),
                                    d_k_to_end.data_ptr<float>(),
                                    output(d_t_inverse),
                                    d_source_v.data_ptr<float>(),
                                    d_chunk_decay.data_ptr<float>(),
                                    reinterpret_cast<const unsigned*>(live_slots_BHN.data_ptr<int>()),
                                    x.scalar_type() == at::kBFloat16},
                                   dims, ops::current_cuda_stream(x));
  TORCH_CHECK(error == nullptr, "memory slot pass input gradients: CUDA kernel failed: ", error);

  variable_list grads(kNumInputs);
  grads[kQ] = d_q;
  grads[kReadWeight] = d_read_weight;
  grads[kChunkDecay] = d_chunk_decay;
  grads[kSourceV] = d_source_v;
  grads[kKToEnd] = d_k_to_end;
  if (delta_rule) {
    grads[kW] = d_w;
    grads[kTInverse] = d_t_inverse;
  }
  return grads;
#else
  TORCH_CHECK(false, "memory slot pass: dla was built without CUDA");
#endif
}

/// Whether the gradient kernels take this pass: it runs on the CUDA kernels and its dims suit them.
bool uses_gradient_kernels([[maybe_unused]] const SlotPassInputs& in, [[maybe_unused]] bool cuda_kernels) {
#if defined(DLA_WITH_CUDA)
  if (!cuda_kernels) return false;
  const c10::cuda::CUDAGuard device_guard(in.transported_q_BHNCK.device());
  return kernels::supports_slot_gradients(dims_of(in));
#else
  return false;
#endif
}

class SlotPassFunction : public torch::autograd::Function<SlotPassFunction> {
 public:
  /// `inputs` in Input order (absent W and T as empty placeholders), already in the compute dtype; `copies`
  /// SlotOperandCopies' in its order (empty placeholders where absent).
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, at::TensorList copies,
                               bool delta_rule, bool compact_states) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    variable_list saved(inputs.begin(), inputs.end());
    SlotPassInputs in = inputs_of(saved, delta_rule);
    in.compact_states = compact_states;
    const auto copy = [&](size_t i) { return copies[i].numel() > 0 ? copies[i] : at::Tensor(); };
    in.bf16 = {copy(0), copy(1), copy(2), copy(3), copy(4)};
    const bool cuda_kernels = slot_pass_uses_cuda_kernels(in);
    KeptForward pass = cuda_kernels ? forward_kernel(in) : forward_loop(in);
    // The bf16 kernels' backward reads K̃ only as their bf16 copy, which takes the float input's place.
    if (pass.k_to_end_bf16_BHNCK.defined()) saved[kKToEnd] = pass.k_to_end_bf16_BHNCK;
    saved.push_back(pass.start_states_BHNSKV);
    saved.push_back(pass.live_slots_BHN);
    saved.push_back(pass.w_bf16_BHNCK);
    saved.push_back(pass.k_to_end_bf16_BHNCK.defined() ? in.bf16.transported_q_BHNCK : at::Tensor());
    ctx->save_for_backward(saved);
    ctx->saved_data["delta_rule"] = delta_rule;
    ctx->saved_data["cuda_kernels"] = cuda_kernels;
    ctx->saved_data["tf32"] = ops::tf32_allowed();
    return {pass.result.inter_BHNCV, pass.result.final_states_BHSKV};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    RECORD_FUNCTION("dla::slot_pass_backward", std::vector<c10::IValue>());
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const ops::Tf32Scope tf32(ctx->saved_data["tf32"].toBool());
    const variable_list saved = ctx->get_saved_variables();
    const bool delta_rule = ctx->saved_data["delta_rule"].toBool();
    const SlotPassInputs in = inputs_of(saved, delta_rule);
    const at::Tensor& start_states_BHNSKV = saved[kNumInputs];
    const at::Tensor d_inter_BHNCV =
        grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(in.source_v_BHNCV);
    const at::Tensor d_final_BHSKV =
        grad_outputs[1].defined()
            ? grad_outputs[1]
            : at::zeros(start_states_BHNSKV.select(2, 0).sizes(), in.source_v_BHNCV.options());
    const bool cuda_kernels = ctx->saved_data["cuda_kernels"].toBool();
    const StateGradients state_grads =
        cuda_kernels ? state_gradients_kernel(in, saved[kNumInputs + 1], d_inter_BHNCV, d_final_BHSKV,
                                              saved[kNumInputs + 2], saved[kNumInputs + 3],
                                              /*compact=*/start_states_BHNSKV.scalar_type() == at::kBFloat16)
                     : state_gradients_loop(in, d_inter_BHNCV, d_final_BHSKV);
    variable_list grads =
        uses_gradient_kernels(in, cuda_kernels)
            ? input_gradients_kernel(in, start_states_BHNSKV, saved[kNumInputs + 1], state_grads,
                                     d_inter_BHNCV)
            : input_gradients_ops(in, start_states_BHNSKV, state_grads, d_inter_BHNCV, cuda_kernels);
    grads.resize(kNumInputs + kNumSlotOperandCopies);  // the copies take no gradient
    grads.push_back(at::Tensor());                     // delta_rule
    grads.push_back(at::Tensor());                     // compact_states
    return grads;
  }
};

}  // namespace

bool slot_pass_gradients_use_cuda_kernels(const SlotPassInputs& in) {
  return uses_gradient_kernels(in, slot_pass_uses_cuda_kernels(in));
}

bool slot_pass_reads_use_cuda_kernel([[maybe_unused]] const SlotPassInputs& in) {
#if defined(DLA_WITH_CUDA)
  if (!slot_pass_uses_cuda_kernels(in)) return false;
  const c10::cuda::CUDAGuard device_guard(in.transported_q_BHNCK.device());
  return kernels::supports_slot_reads(dims_of(in));
#else
  return false;
#endif
}

bool slot_pass_compacts_states(const SlotPassInputs& in) {
  return in.compact_states && slot_pass_reads_use_cuda_kernel(in) && slot_pass_gradients_use_cuda_kernels(in);
}

bool slot_pass_uses_bf16_operands([[maybe_unused]] const SlotPassInputs& in) {
#if defined(DLA_WITH_CUDA)
  if (!slot_pass_compacts_states(in)) return false;
  const c10::cuda::CUDAGuard device_guard(in.transported_q_BHNCK.device());
  return kernels::supports_slot_pass_bf16(dims_of(in));
#else
  return false;
#endif
}

bool slot_pass_takes_bf16_copies(const SlotPassShape& shape, const at::Device& device) {
  // Inputs of these sizes that hold no memory: the choice of kernels reads only sizes, dtype and device.
  const at::Tensor scalar = at::empty({}, at::TensorOptions().dtype(at::kFloat).device(device));
  const auto [B, H, N, C, K, V, S] = shape;
  const auto sized = [&](std::initializer_list<int64_t> sizes) { return scalar.expand(sizes); };
  SlotPassInputs probe{sized({B, H, N, C, K}), sized({B, H, N, C, S}), sized({B, H, N, C, K}),
                       sized({B, H, N, C, K}), sized({B, H, N, C, C}), sized({B, H, N, C, V}),
                       sized({B, H, N}),       sized({B, H, N, S, S}), sized({B, H, N, S, C})};
  probe.compact_states = true;
  return slot_pass_uses_bf16_operands(probe);
}

SlotPassResult slot_pass(const SlotPassInputs& in, bool fused) {
  RECORD_FUNCTION("dla::slot_pass", std::vector<c10::IValue>());
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
  const auto copy = [&](const at::Tensor& x) {
    return x.defined() ? x : at::empty({0}, placeholder.options().dtype(at::kBFloat16));
  };
  const variable_list copies = {copy(in.bf16.transported_q_BHNCK), copy(in.bf16.k_to_end_BHNCK),
                                copy(in.bf16.w_BHNCK), copy(in.bf16.t_inverse_BHNCC),
                                copy(in.bf16.source_v_BHNCV)};
  const variable_list out = SlotPassFunction::apply(at::TensorList(inputs), at::TensorList(copies),
                                                    in.w_BHNCK.defined(), in.compact_states);
  return {out[0], out[1]};
}

}  // namespace dla::memory
