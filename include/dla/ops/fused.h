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
StatePassForward state_pass_forward(const at::Tensor& k_to_end_BHMCK, const at::Tensor& u_BHMCV,
                                    const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                                    const at::Tensor& initial_state_BHKV);

/// The state pass backward, from the last chunk to the first:
///   dv_new_m = d_v_new_intra_m + k_to_end_m dS_{m+1}
///   dS_m     = q_read_mᵀ d_out_m + chunk_decay_m dS_{m+1} − w_mᵀ dv_new_m   (no w term without w)
/// starting from dS_M = d_final_state. q_read is the query as it reads the chunk-start state (scale and
/// decay applied); d_v_new_intra the gradient v_new gets from the chunk's own outputs.
struct StatePassBackward {
  at::Tensor d_states_next_BHMKV;   ///< dS_{m+1}, the gradient of the state chunk m hands on
  at::Tensor d_v_new_BHMCV;         ///< dv_new_m, complete
  at::Tensor d_initial_state_BHKV;  ///< dS_0
};
StatePassBackward state_pass_backward(const at::Tensor& q_read_BHMCK, const at::Tensor& d_out_BHMCV,
                                      const at::Tensor& d_v_new_intra_BHMCV, const at::Tensor& k_to_end_BHMCK,
                                      const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                                      const at::Tensor& d_final_state_BHKV);

/// T = (I + A)⁻¹ for strictly lower triangular A_...CC (entries on and above the diagonal are ignored): the
/// WY representation's inverse, so that the chunk terms and their gradients are plain matmuls. A CUDA kernel
/// for float32 on the GPU with C <= 64 a multiple of 4, a triangular solve otherwise.
at::Tensor unit_lower_inverse(const at::Tensor& a_CC);

/// unit_lower_inverse for callers that autograd differentiates (the multi-state forms): the same forward, and
/// the gradient dA = −Tᵀ dT Tᵀ on the strictly lower part (0 on and above the diagonal).
at::Tensor differentiable_unit_lower_inverse(const at::Tensor& a_CC);

/// Whether the state pass runs as a CUDA kernel for these operands (float32 on a CUDA device, C a multiple
/// of 4, K of 8, V of 4, shared memory within the device's limit); otherwise it is a loop of LibTorch ops.
bool state_pass_uses_cuda_kernel(const at::Tensor& k_to_end_BHMCK, const at::Tensor& u_BHMCV);

}  // namespace dla::ops::fused
