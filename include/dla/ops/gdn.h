// The gated delta rule, Gated DeltaNet's sequence mixer: the per-token recurrence (the definition) and the
// chunkwise-parallel form built on the WY representation (docs/ops/gdn.md). Both are differentiable.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, M chunks, C chunk length.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dla/ops/common.h"

namespace dla::ops::gdn {

// Both forms take and return the same tensors:
//   q_BTHK, k_BTHK   queries and keys, already L2-normalised by the caller
//   v_BTHV           values
//   g_BTH            log decay (<= 0), alpha = exp(g)
//   beta_BTH         write strength in (0, 2)
//   scale            read scale, K^-0.5 in Gated DeltaNet
//   initial_state    [B,H,K,V], or an undefined tensor for zeros
// and compute   S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = scale S_t^T q_t.
// They compute in float32 (float64 when an input is float64) and return out [B,T,H,V] in q's dtype and
// final_state [B,H,K,V] in the compute dtype. Bad shapes, dtypes or devices throw c10::Error.

/// The recurrence, one token at a time: the reference the chunked form is tested against.
OpResult naive_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                         const at::Tensor& beta, double scale, const at::Tensor& initial_state);

/// The chunkwise-parallel form: parallel within chunks of `chunk_size` (>= 1) tokens, sequential over chunks.
/// Any T works; it is padded internally.
OpResult chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
               const at::Tensor& beta, double scale, const at::Tensor& initial_state,
               int64_t chunk_size = 64);

/// The WY representation of one chunk's delta-rule updates (docs/ops/gdn.md): with
/// A = strictly-lower(beta_i (k_i . k_j) decay_ij) and T = (I + A)^-1, w = T (beta exp(gamma) k) and
/// u = T (beta v), so that the chunk writes v_new = u - w S into the state S it starts from.
struct WyRepr {
  at::Tensor w_BHMCK;
  at::Tensor u_BHMCV;
};

/// The intra-chunk stage of `chunk`, from chunked inputs, gamma_BHMC = common::cumsum_gates(g) and
/// decay_BHMCC = common::decay_matrix(gamma).
WyRepr wy_repr(const at::Tensor& k_BHMCK, const at::Tensor& v_BHMCV, const at::Tensor& beta_BHMC,
               const at::Tensor& gamma_BHMC, const at::Tensor& decay_BHMCC);

}  // namespace dla::ops::gdn
