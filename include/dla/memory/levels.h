// The level structure of the multi-state memory policies: the DLA boundary scan (death times of the
// candidate boundaries, spec/dla.md §3.1–§3.2), the DLA levels derived from them (§3.3) and the Fenwick
// levels of log-linear attention (§1). CPU, deterministic, int64 results. Derivations: docs/memory/dla.md.
// Shapes: B batch, T tokens, H heads.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dla/memory/options.h"

namespace dla::memory {

struct BoundaryOptions {
  int64_t capacity = 8;                 ///< M: at most M segments, so at most M - 1 alive boundaries; >= 1
  double threshold = 0.5;               ///< τ: token t >= 1 is a candidate when u_t >= τ (in float32)
  MergeRule merge = MergeRule::lowest;  ///< which boundary an overflow evicts
};

/// Death time of every token from the float32 scores u_BTH (u[:,0,:] is ignored: token 0 is never a
/// candidate): -1 for a non-candidate; T for a boundary never evicted and for token 0; else the token whose
/// processing merged it away (its own index when it lost at once). Boundary r is alive after token t iff
/// r <= t < death[r]. One ordered pass per (batch, head), O(T log M). Returns death_BHT, int64, on the CPU.
at::Tensor boundary_death_times(const at::Tensor& u_BTH, const BoundaryOptions& options);

/// level(t, s) of spec §3.3 for every query t and key s, from death_BHT (int64, as boundary_death_times
/// returns): 0 on the diagonal, 1 + #{r alive after t - 1 : s < r <= t - 1} below it (1..M), -1 above.
/// Returns level_BHTT, int64, on the CPU.
at::Tensor dla_levels(const at::Tensor& death_BHT);

/// Fenwick (log-linear) levels: level(t, s) = bit_length(t XOR s) for s < t, 0 on the diagonal, -1 above.
/// Returns level_TT, int64, on the CPU.
at::Tensor fenwick_levels(int64_t num_tokens);

}  // namespace dla::memory
