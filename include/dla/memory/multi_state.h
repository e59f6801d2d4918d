// Multi-state linear attention (spec/dla.md §1, §4) in its three forms: the quadratic mask form (oracle), the
// per-token recurrence over an explicit state cache (decoding) and the chunkwise-parallel form (training).
// They serve every memory policy and both backbones: the policy supplies the segment table and λ, the
// backbone the recurrence terms. Shapes: B batch, T tokens, H heads, K key dim, V value dim, S slots,
// L = S + 1 levels (level 0 is the sentinel), Q = T + 1 queries.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dla/memory/segments.h"

namespace dla::memory {

/// The per-token terms of one backbone's recurrence, as a mixer hands them to its memory.
struct Recurrence {
  at::Tensor q_BTHK;    ///< queries (L2-normalised for the delta rule)
  at::Tensor k_BTHK;    ///< keys
  at::Tensor v_BTHV;    ///< values
  at::Tensor g_BTH;     ///< log decay (<= 0)
  at::Tensor beta_BTH;  ///< write strength of the delta rule (Gated DeltaNet); undefined for SSD (Mamba-2)
  double scale = 1.0;   ///< read scale
  bool delta_rule() const { return beta_BTH.defined(); }
};

/// How the output weighs each state: o_t = scale · Σ_j λ_t^(level_t(j)) · c_t(j) · q_tᵀ S_t^(j).
struct LevelWeights {
  at::Tensor lam_BTHL;   ///< λ per token, head and level
  at::Tensor conf_BHQS;  ///< c per query and slot, aligned with the segment table's rows; undefined for 1
};

struct MultiStateResult {
  at::Tensor out_BTHV;      ///< in q's dtype
  at::Tensor states_BHSKV;  ///< the slot states after the last token (as query T sees them), compute dtype
};

// All forms compute in float32 (float64 when an input is float64) with differentiable ATen ops, so autograd
// reaches the recurrence terms, λ and the confidences. The segment table has at least T + 1 rows (row i is
// query first_position + i); its S must be L − 1.

/// The mask form of spec §2: builds the [B,H,T,T] level table, O(T²) memory. The small-T oracle.
at::Tensor quadratic(const Recurrence& terms, const LevelWeights& weights, const SegmentTable& segments);

/// One token at a time over S slot states, starting from initial_states_BHSKV (zeros when undefined) at
/// token first_position: apply the transition to every state, read the sentinel and the states, then move
/// the states and the sentinel to their slots at the next query (merges add states).
MultiStateResult recurrent(const Recurrence& terms, const LevelWeights& weights, const SegmentTable& segments,
                           const at::Tensor& initial_states_BHSKV = {}, int64_t first_position = 0);

/// The chunkwise-parallel form of spec §4.2 from empty states: mask form within chunks of chunk_size tokens,
/// the chunk-start states read through transported queries, states moved to their slots at chunk ends. Any T.
MultiStateResult chunkwise(const Recurrence& terms, const LevelWeights& weights, const SegmentTable& segments,
                           int64_t chunk_size);

}  // namespace dla::memory
