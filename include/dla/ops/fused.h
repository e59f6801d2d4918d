// The fused chunkwise form of the gated delta rule and SSD: the forward of ops::gdn::chunk / ops::ssd::chunk
// with a hand-written backward that keeps only the inputs, the chunk-start states and the written values
// (recomputing the other chunk terms instead of keeping autograd's intermediates), and the sequential state
// pass run by one CUDA kernel per direction (a loop of LibTorch ops elsewhere).
// Derivation: docs/ops/fused.md. Shapes: B batch, T tokens, H heads, K key dim, V value dim, M chunks,
// C chunk length.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dla/ops/common.h"

namespace dla::ops::fused {

/// The chunkwise op: the gated delta rule when beta_BTH is defined, SSD when it is undefined. Same inputs,
/// outputs and checks as ops::gdn::chunk / ops::ssd::chunk, which call it under use_fused_kernels().
OpResult chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
               const at::Tensor& beta, double scale, const at::Tensor& initial_state, int64_t chunk_size);

/// The state pass forward (common::state_pass without autograd): for every chunk m, record S_m, write
/// v_new_m = u_m − w_m S_m (u_m when w is undefined) and move on with
/// S_{m+1} = chunk_decay_m S_m + k_to_end_mᵀ v_new_m.
struct StatePassForward {
  at::Tensor states_BHMKV;      ///< S_m, the state each chunk starts from
  at::Tensor v_new_BHMCV;       ///< v_new_m (u itself when w is undefined)
  at::Tensor final_state_BHKV;  ///< S_M
};
/// k_to_end and w may be bf16 (prepare_chunks' bf16_state_operands): the products then run on bf16 tensor
/// cores where the bf16 kernels apply, which return the states and v_new in bf16 (also without w), and in
/// float32 otherwise. The final state is float32.
StatePassForward state_pass_forward(const at::Tensor& k_to_end_BHMCK, const at::Tensor& u_BHMCV,
                                    const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                                    const at::Tensor& initial_state_BHKV);

/// The state pass backward, from the last chunk to the first:
///   dv_new_m = d_v_new_intra_m + k_to_end_m dS_{m+1}
///   dS_m     = q_read_mᵀ d_out_m + chunk_decay_m dS_{m+1} − w_mᵀ dv_new_m   (no w term without w)
/// starting from dS_M = d_final_state. q_read is the query as it reads the chunk-start state (scale and
/// decay applied); d_v_new_intra the gradient v_new gets from the chunk's own outputs. q_read, d_out,
/// k_to_end and w may be bf16, as for the forward: where the bf16 kernels run, dS_next and dv_new are bf16.
struct StatePassBackward {
  at::Tensor d_states_next_BHMKV;   ///< dS_{m+1}, the gradient of the state chunk m hands on
  at::Tensor d_v_new_BHMCV;         ///< dv_new_m, complete
  at::Tensor d_initial_state_BHKV;  ///< dS_0
};
StatePassBackward state_pass_backward(const at::Tensor& q_read_BHMCK, const at::Tensor& d_out_BHMCV,
                                      const at::Tensor& d_v_new_intra_BHMCV, const at::Tensor& k_to_end_BHMCK,
                                      const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                                      const at::Tensor& d_final_state_BHKV);

/// The per-chunk terms the state pass and the backward read, as chunk_prepare's CUDA kernel computes them
/// from the [B, T, H, ·] inputs: gamma the chunk-local cumsum of g, k_to_end = k ⊙ exp(gamma_last − gamma),
/// chunk_decay = exp(gamma_last), and for the delta rule T = (I + A)⁻¹ with w = T (beta exp(gamma) ⊙ k) and
/// u = T (beta ⊙ v); for SSD u = v and w, inverse are undefined. All float32, and where asked for also bf16
/// copies of k_to_end, w and inverse (undefined otherwise).
struct PreparedChunks {
  at::Tensor gamma_BHMC, k_to_end_BHMCK, chunk_decay_BHM, w_BHMCK, inverse_BHMCC, u_BHMCV;
  at::Tensor k_to_end_bf16_BHMCK, w_bf16_BHMCK, inverse_bf16_BHMCC;
};

/// What prepare_chunks forms besides the terms every caller reads.
struct PrepareOptions {
  /// u, which the single-state pass reads; the multi-state forms write their values per slot instead.
  bool written_values = true;
  /// The bf16 copies, which the multi-state forms' bf16 slot kernels read.
  bool bf16_copies = false;
  /// T from an earlier call on the same k, g and beta (the forward's, kept for the backward): read instead
  /// of formed, and returned as the result's inverse. Not with bf16_copies.
  at::Tensor inverse{};
  /// k_to_end and w in bf16 instead of float32 (the result's k_to_end and w are then bf16), for the state
  /// pass's bf16 kernels, which read nothing else of them. Not with bf16_copies.
  bool bf16_state_operands = false;
};

/// Whether the per-chunk CUDA kernels (prepare_chunks, chunk_outputs) run for these inputs: CUDA tensors
/// while TF32 is allowed (their products are TF32), q, k and v all float32 or all bf16, a float32
/// compute dtype, a chunk length C of 32 or 64 and a key dim K of 64, 128 or 256 (the instantiated kernels),
/// V a multiple of 16 up to 1024, and shared memory within the device's limit. Otherwise the op computes
/// those stages as LibTorch ops.
bool chunk_stages_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        at::ScalarType compute_dtype, int64_t chunk_size);

/// The chunk terms for the state pass, one CUDA kernel over all chunks (beta undefined for SSD). Requires
/// chunk_stages_apply.
PreparedChunks prepare_chunks(const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                              const at::Tensor& beta, int64_t chunk_size, const PrepareOptions& options = {});

/// The op's output [B, T, H, V] in q's dtype, one CUDA kernel over all chunks: scale · ((exp(gamma) ⊙ q) S_m
/// + ((q kᵀ) ⊙ D) v_new) per chunk, from the state pass's chunk-start states and written values. Requires
/// chunk_stages_apply.
at::Tensor chunk_outputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& gamma_BHMC,
                         const at::Tensor& states_BHMKV, const at::Tensor& v_new_BHMCV, double scale);

/// Whether the backward's per-chunk CUDA kernels (chunk_value_gradient, chunk_gradients) run for these
/// inputs: chunk_stages_apply, with a key dim K of 64 or 128 (the instantiated kernels) and shared memory
/// within the device's limit. Otherwise the backward computes those stages as LibTorch ops.
bool chunk_gradients_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           at::ScalarType compute_dtype, int64_t chunk_size);

/// What the state pass backward reads besides the forward's chunk terms, one CUDA kernel over all chunks
/// from the output gradient d_out_BTHV, zero rows past the last token. q_read and d_out in q's dtype (bf16
/// for bf16 inputs: the operands of the state pass's bf16 kernels, and d_out exact), d_v_new_intra float32.
struct ValueGradient {
  at::Tensor q_read_BHMCK;         ///< scale · exp(γ) ⊙ q, the query as it reads the chunk-start state
  at::Tensor d_out_BHMCV;          ///< the output gradient in chunks
  at::Tensor d_v_new_intra_BHMCV;  ///< scale · ((q kᵀ) ⊙ D)ᵀ dO, what v_new gets from its own chunk
};
ValueGradient chunk_value_gradient(const at::Tensor& q, const at::Tensor& k, const at::Tensor& d_out_BTHV,
                                   const at::Tensor& gamma_BHMC, double scale);

/// The op's input gradients: d_q, d_k and d_v [B, T, H, ·] in q's dtype, d_g and d_beta [B, T, H] in float32
/// (d_beta undefined for SSD).
struct ChunkGradients {
  at::Tensor d_q, d_k, d_v, d_g, d_beta;
};

/// The input gradients after the state pass backward, one CUDA kernel over all chunks: from the inputs,
/// prepare_chunks' gamma and inverse (undefined for SSD), the forward pass's chunk-start states and written
/// values, chunk_value_gradient's d_out and the state pass backward's dS_next and dv_new. Requires
/// chunk_gradients_apply.
ChunkGradients chunk_gradients(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& beta, const at::Tensor& gamma_BHMC,
                               const at::Tensor& inverse_BHMCC, const at::Tensor& states_BHMKV,
                               const at::Tensor& v_new_BHMCV, const at::Tensor& d_out_BHMCV,
                               const at::Tensor& d_states_next_BHMKV, const at::Tensor& d_v_new_BHMCV,
                               double scale);

/// T = (I + A)⁻¹ for strictly lower triangular A_...CC (entries on and above the diagonal are ignored): the
/// WY representation's inverse, so that the chunk terms and their gradients are plain matmuls. A CUDA kernel
/// for float32 on the GPU with C <= 64 a multiple of 4, a triangular solve otherwise.
at::Tensor unit_lower_inverse(const at::Tensor& a_CC);

/// unit_lower_inverse for callers that autograd differentiates (the multi-state forms): the same forward, and
/// the gradient dA = −Tᵀ dT Tᵀ on the strictly lower part (0 on and above the diagonal).
at::Tensor differentiable_unit_lower_inverse(const at::Tensor& a_CC);

/// Whether the state pass runs as a CUDA kernel for these operands: bf16 ones where the bf16 kernels run them
/// (C of 32 or 64, K of 64 or 128, V a multiple of 8), else in float32 on a CUDA device with C a multiple of
/// 4, K of 8, V of 4 and shared memory within the device's limit; otherwise it is a loop of LibTorch ops.
bool state_pass_uses_cuda_kernel(const at::Tensor& k_to_end_BHMCK, const at::Tensor& u_BHMCV);

/// Whether the fused op hands the state pass bf16 operands (prepare_chunks' bf16_state_operands, and
/// chunk_value_gradient's q_read and d_out, which are in q's dtype): the per-chunk kernels run
/// (chunk_stages_apply) on bf16 inputs whose dims the bf16 state-pass kernels run.
bool bf16_state_pass_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             at::ScalarType compute_dtype, int64_t chunk_size);

}  // namespace dla::ops::fused
