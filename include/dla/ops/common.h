// What the linear-attention ops (gated delta rule, SSD) share: their result type, input checks, and the
// stages of the chunkwise-parallel form that do not depend on the update rule (as fla's ops/common). Shapes:
// B batch, T tokens, H heads, K key dim, V value dim, M chunks, C chunk length.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include <ATen/core/Tensor.h>

namespace dla::ops {

/// Output and final state of a linear-attention op.
struct OpResult {
  at::Tensor out;
  at::Tensor final_state;
};

}  // namespace dla::ops

namespace dla::ops::common {

/// Checks what every op takes: q_BTHK and k_BTHK of one shape with T >= 1, v_BTHV, g_BTH, and
/// initial_state_BHKV unless undefined; floating dtypes on one device. Throws c10::Error naming `op` and the
/// offending sizes.
void check_inputs(std::string_view op, const at::Tensor& q_BTHK, const at::Tensor& k_BTHK,
                  const at::Tensor& v_BTHV, const at::Tensor& g_BTH, const at::Tensor& initial_state_BHKV);

/// Checks that the per-token, per-head input `name` (a gate such as g or beta) is [B,T,H] of q_BTHK,
/// floating, on q's device.
void check_token_gate(std::string_view op, std::string_view name, const at::Tensor& gate_BTH,
                      const at::Tensor& q_BTHK);

/// float32, or float64 when any defined input is float64: inputs are promoted with float32.
at::ScalarType compute_dtype(std::initializer_list<at::Tensor> inputs);

/// initial_state_BHKV in `dtype`, or zeros of [B,H,K,V] taken from k_BTHK and v_BTHV when it is undefined.
at::Tensor initial_state_or_zeros(const at::Tensor& initial_state_BHKV, const at::Tensor& k_BTHK,
                                  const at::Tensor& v_BTHV, at::ScalarType dtype);

/// [B,T,H,...] -> [B,H,M,C,...] in `dtype`, T zero-padded up to M*C. Zero keys, values, betas and log gates
/// leave the state unchanged, so padding changes neither the outputs kept nor the final state.
at::Tensor to_chunks(const at::Tensor& x_BTH_, int64_t chunk_size, at::ScalarType dtype);

/// [B,H,M,C,...] -> [B,T,H,...], dropping the padding after `num_tokens`.
at::Tensor from_chunks(const at::Tensor& x_BHMC_, int64_t num_tokens);

/// gamma_BHMC: the chunk-local cumulative sum of the log gates g_BHMC.
at::Tensor cumsum_gates(const at::Tensor& g_BHMC);

/// decay_BHMCC[i,j] = exp(gamma_i - gamma_j) for j <= i, else 0: the decay from token j to token i of a
/// chunk.
at::Tensor decay_matrix(const at::Tensor& gamma_BHMC);

/// The sequential part of the chunked form, one step per chunk.
struct StatePass {
  at::Tensor states_BHMKV;      ///< the state at the start of each chunk
  at::Tensor v_new_BHMCV;       ///< the values each chunk writes: u - w S for the delta rule, v otherwise
  at::Tensor final_state_BHKV;  ///< the state after the last chunk
};

/// Runs the state over the chunks: S <- exp(gamma_last) S + (k exp(gamma_last - gamma))^T v_new, with
/// v_new = u_BHMCV - w_BHMCK S when w is defined (the delta rule's WY form), else v_new = u_BHMCV.
StatePass state_pass(const at::Tensor& k_BHMCK, const at::Tensor& u_BHMCV, const at::Tensor& w_BHMCK,
                     const at::Tensor& gamma_BHMC, const at::Tensor& initial_state_BHKV);

/// alpha · a b [+ beta · base] over the matrices of the last two dims (a and b with the same leading dims):
/// one batched GEMM whose epilogue scales and adds, instead of a matmul followed by elementwise passes over
/// its output. Without base, beta is unused.
at::Tensor scaled_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, const at::Tensor& base = {},
                         double beta = 1.0);

/// out_BHMCV = scale * ((q exp(gamma)) S_chunk_start + ((q k^T) * decay) v_new), every chunk at once.
at::Tensor chunk_output(const at::Tensor& q_BHMCK, const at::Tensor& k_BHMCK, const at::Tensor& v_new_BHMCV,
                        const at::Tensor& gamma_BHMC, const at::Tensor& decay_BHMCC,
                        const at::Tensor& states_BHMKV, double scale);

}  // namespace dla::ops::common
