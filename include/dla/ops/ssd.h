// Mamba-2's SSD written as scalar-gated linear attention (fla_layers.md §3.5): the per-token recurrence (the
// definition) and the chunkwise-parallel form (docs/ops/ssd.md). Both are differentiable.
// Shapes: B batch, T tokens, H heads, N state dim, P head dim.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dla/ops/common.h"

namespace dla::ops::ssd {

// Both forms take and return the same tensors. In Mamba-2 terms q = C and k = B (groups already expanded to
// heads by the caller), v = dt * x, g = dt * A (log decay, <= 0), scale = 1:
//   q_BTHN, k_BTHN   queries and keys
//   v_BTHP           values
//   g_BTH            log decay
//   initial_state    [B,H,N,P], or an undefined tensor for zeros
// and compute   S_t = exp(g_t) S_{t-1} + k_t v_t^T,   o_t = scale S_t^T q_t   (Mamba-2's y - D x).
// They compute in float32 (float64 when an input is float64) and return out [B,T,H,P] in q's dtype and
// final_state [B,H,N,P] in the compute dtype. Bad shapes, dtypes or devices throw c10::Error.

/// The recurrence, one token at a time: the reference the chunked form is tested against.
OpResult naive_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                         double scale, const at::Tensor& initial_state);

/// The chunkwise-parallel form: parallel within chunks of `chunk_size` (>= 1) tokens, sequential over chunks.
/// Any T works; it is padded internally.
OpResult chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
               double scale, const at::Tensor& initial_state, int64_t chunk_size = 64);

}  // namespace dla::ops::ssd
