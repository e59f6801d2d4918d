// The CUDA kernels of the slot pass's input gradients (dla/memory/slot_pass.h): from the start states X,
// their gradients G and the gradients dΔ of the writes, every input's gradient for all chunks, one thread
// block per chunk, reading each slot's states once instead of through several batched products with
// temporaries of the states' size. Same conventions as slot_pass_kernels.h: contiguous float32 device buffers
// with B·H flattened, TF32 tensor-core products with float32 accumulation (bf16 with compact states).
#pragma once

#include "slot_pass_kernels.h"

namespace dla::memory::kernels {

struct SlotGradientArgs {
  const void* start_states;    ///< X [BH, N, S, K, V]: float32, or bf16 with compact_states
  const void* d_end_states;    ///< G [BH, N, S, K, V]: as X
  const void* d_written;       ///< dΔ [BH, N, S, C, V]: as X
  const float* d_inter;        ///< [BH, N, C, V]
  const float* transported_q;  ///< [BH, N, C, K]
  const float* read_weight;    ///< [BH, N, C, S]
  const float* source_v;       ///< [BH, N, C, V]
  const float* t_inverse;      ///< [BH, N, C, C]; null for SSD
  const float* w;              ///< [BH, N, C, K]; null for SSD
  const float* state_move;     ///< [BH, N, S, S]
  const float* token_move;     ///< [BH, N, S, C]
  float* d_read_weight;        ///< [BH, N, C, S]: ⟨d_inter_c, (q̃ X_s)_c⟩
  float* d_transported_q;      ///< [BH, N, C, K]: Σ_s (w_s ⊙ d_inter) X_sᵀ
  float* d_w;                  ///< [BH, N, C, K]: −Σ_r dΔ_r X̄_rᵀ; null for SSD
  float* d_k_to_end;  ///< [BH, N, C, K]: T Σ_r L_r G_rᵀ − W Σ_r X̄_r G_rᵀ, L_r = m_r ⊙ v (T = I: SSD)
  float* d_t_inverse;    ///< [BH, N, C, C]: Σ_r dΔ_r L_rᵀ; null for SSD
  float* d_source_v;     ///< [BH, N, C, V]: Σ_r m_r ⊙ (Tᵀ dΔ_r)
  float* d_chunk_decay;  ///< [BH, N]: Σ_r ⟨X̄_r, G_r⟩
  /// [BH, N], as the slot-pass forward wrote them: slots dead at a chunk's start are skipped, so their X_s,
  /// and G_r and dΔ_r of slots dead in the chunk, need not be set. Null: every slot is visited.
  const unsigned* live_slots;
  bool compact_states;  ///< whether start_states, d_end_states and d_written hold bf16
};

/// Whether slot_pass_gradients runs these dims on the current device: C and K multiples of 16, V of 32, at
/// most 16 slots, and the tiles and shared memory of its two kernels within their limits. The state moves'
/// columns must hold at most one 1 each (as memory::chunkwise builds them).
bool supports_slot_gradients(const SlotPassDims& dims);

/// nullptr on success, else the CUDA error's text.
const char* slot_pass_gradients(const SlotGradientArgs& args, const SlotPassDims& dims, void* stream);

}  // namespace dla::memory::kernels
