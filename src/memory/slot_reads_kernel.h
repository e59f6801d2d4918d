// The CUDA kernel of the multi-state reads (dla/memory/slot_pass.h): every chunk's queries read the slot
// states at the chunk's start, inter[c] = Σ_s w[c, s] (q̃ X_s)[c], without the [C, S·K] tensor of weighted
// queries that the same reads as one batched matmul need. Same conventions as slot_pass_kernels.h.
#pragma once

#include "slot_pass_kernels.h"

namespace dla::memory::kernels {

struct SlotReadArgs {
  const float* transported_q;  ///< q̃ [BH, N, C, K]
  const float* read_weight;    ///< w [BH, N, C, S]
  const void* start_states;    ///< X [BH, N, S, K, V]: float32, or bf16 with compact_states
  float* inter;                ///< [BH, N, C, V]
  /// [BH, N], as the slot-pass forward wrote them: only slots live at a chunk's start are read (their
  /// states alone need be set). Null: every slot is read.
  const unsigned* live_slots;
  bool compact_states;  ///< whether start_states holds bf16
};

/// Whether slot_reads runs these dims on the current device: C 32 or 64, K and V multiples of 32, at most 16
/// slots, and its shared memory within the device's limit.
bool supports_slot_reads(const SlotPassDims& dims);

/// nullptr on success, else the CUDA error's text.
const char* slot_reads(const SlotReadArgs& args, const SlotPassDims& dims, void* stream);

}  // namespace dla::memory::kernels
