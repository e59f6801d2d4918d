// The CUDA kernels of the multi-state slot pass (dla/memory/slot_pass.h), behind a plain C++ interface so
// that only the .cu file is compiled by nvcc. Every pointer is a contiguous float32 device buffer, 16-byte
// aligned, in the layouts of SlotPassInputs with B·H flattened into one leading dim; `stream` is a
// cudaStream_t. The products run on tensor cores in TF32 (the bf16 kernels: bf16) with float32 accumulation;
// the states stay float32.
#pragma once

#include <cstdint>

namespace dla::memory::kernels {

struct SlotPassDims {
  int64_t batch_heads;  ///< B·H
  int64_t chunks;       ///< N
  int64_t chunk_size;   ///< C
  int64_t key_dim;      ///< K
  int64_t value_dim;    ///< V
  int64_t slots;        ///< S
};

struct SlotPassForwardArgs {
  const float* k_to_end;     ///< [BH, N, C, K]
  const float* w;            ///< [BH, N, C, K]; null for SSD
  const float* t_inverse;    ///< [BH, N, C, C]; null for SSD
  const float* source_v;     ///< [BH, N, C, V]
  const float* chunk_decay;  ///< [BH, N]
  const float* state_move;   ///< [BH, N, S, S]
  const float* token_move;   ///< [BH, N, S, C]
  void* start_states;        ///< [BH, N, S, K, V]: the slot states at each chunk's start (float32, or bf16)
  float* final_states;       ///< [BH, S, K, V]
  /// [BH, N]: bit s set where slot s is live in the chunk's transitions (after its moves: a state moved in,
  /// or a token written); the backward skips the others, and a slot live at a chunk's start is one live in
  /// the previous chunk.
  unsigned* live_slots;
  /// Whether the start states of slots dead at a chunk's start are written (zeros); else they are left
  /// unset, for readers that skip them by live_slots (the reads and gradient kernels).
  bool write_dead_slots;
  bool compact_states;  ///< whether start_states is bf16
};

/// The forward with bf16 operands (slot_pass_bf16.cu), for compact states: the same chunk inputs and outputs
/// as SlotPassForwardArgs, with W, K̃, T⁻¹ and v given in bf16 (16-byte aligned) and the start states of dead
/// slots always left unset.
struct SlotPassForwardBf16Args {
  const void* k_to_end;      ///< [BH, N, C, K] bf16
  const void* w;             ///< [BH, N, C, K] bf16; null for SSD
  const void* t_inverse;     ///< [BH, N, C, C] bf16; null for SSD
  const void* source_v;      ///< [BH, N, C, V] bf16
  const float* chunk_decay;  ///< [BH, N]
  const float* state_move;   ///< [BH, N, S, S]
  const float* token_move;   ///< [BH, N, S, C]
  void* start_states;        ///< [BH, N, S, K, V] bf16
  float* final_states;       ///< [BH, S, K, V]
  unsigned* live_slots;      ///< [BH, N], as SlotPassForwardArgs::live_slots
};

struct SlotPassBackwardArgs {
  const float* transported_q;   ///< [BH, N, C, K]
  const float* read_weight;     ///< [BH, N, C, S]
  const float* k_to_end;        ///< [BH, N, C, K]
  const float* w;               ///< [BH, N, C, K]; null for SSD
  const float* chunk_decay;     ///< [BH, N]
  const float* state_move;      ///< [BH, N, S, S]
  const float* d_inter;         ///< [BH, N, C, V]
  const float* d_final_states;  ///< [BH, S, K, V]
  void* d_end_states;  ///< [BH, N, S, K, V]: the gradient of the slot states after each chunk (float32, or
                       ///< bf16)
  void*
      d_written;  ///< [BH, N, S, C, V]: the gradient of what each chunk writes to each slot (as d_end_states)
  const unsigned* live_slots;  ///< [BH, N], as the forward wrote it
  /// Whether d_end_states and d_written are written for slots dead in the chunk; else they are left unset,
  /// for the gradient kernels, which never read them.
  bool write_dead_slots;
  bool compact_states;  ///< whether d_end_states and d_written are bf16
};

/// The backward with bf16 operands, for compact states: the inputs of SlotPassBackwardArgs with q̃, K̃, W and
/// d_inter given in bf16 (16-byte aligned); d_end_states and d_written are bf16, dead slots' left unset.
struct SlotPassBackwardBf16Args {
  const void* transported_q;    ///< [BH, N, C, K] bf16
  const float* read_weight;     ///< [BH, N, C, S]
  const void* k_to_end;         ///< [BH, N, C, K] bf16
  const void* w;                ///< [BH, N, C, K] bf16; null for SSD
  const float* chunk_decay;     ///< [BH, N]
  const float* state_move;      ///< [BH, N, S, S]
  const void* d_inter;          ///< [BH, N, C, V] bf16
  const float* d_final_states;  ///< [BH, S, K, V]
  void* d_end_states;           ///< [BH, N, S, K, V] bf16
  void* d_written;              ///< [BH, N, S, C, V] bf16
  const unsigned* live_slots;   ///< [BH, N], as the forward wrote it
};

struct SlotMoveArgs {
  const float* moves;   ///< [chunks, S, S]
  const float* states;  ///< [chunks, S, entries]
  float* moved;         ///< [chunks, S, entries]: moved[r] = Σ_s moves[r, s] states[s]
  int64_t chunks;
  int64_t slots;
  int64_t entries;  ///< per slot, a multiple of 4
};

/// Whether the kernels can run these dims on the current device (slots ≤ 16, C and K multiples of 16, V of 4,
/// and the shared memory they need).
bool supports_slot_pass(const SlotPassDims& dims);

/// nullptr on success, else the CUDA error's text.
const char* slot_pass_forward(const SlotPassForwardArgs& args, const SlotPassDims& dims, void* stream);
/// Whether the bf16 kernels (slot_pass_bf16.cu) run these dims: C = 64, K = 128, at most 8 slots, V a
/// multiple of 16.
bool supports_slot_pass_bf16(const SlotPassDims& dims);
/// The forward and backward on bf16 tensor cores, the states carried in float32 (slot_pass_bf16.cu).
const char* slot_pass_forward_bf16(const SlotPassForwardBf16Args& args, const SlotPassDims& dims,
                                   void* stream);
const char* slot_pass_backward_bf16(const SlotPassBackwardBf16Args& args, const SlotPassDims& dims,
                                    void* stream);
const char* slot_pass_backward(const SlotPassBackwardArgs& args, const SlotPassDims& dims, void* stream);

/// Whether move_slot_states takes these dims: at most 16 slots, entries a multiple of 4.
bool supports_slot_move(int64_t slots, int64_t entries);
/// The states of every chunk moved to their slots, a memory-bound pass (a batched matmul of depth S would
/// run on CUDA cores at a fraction of the bandwidth).
const char* move_slot_states(const SlotMoveArgs& args, void* stream);

}  // namespace dla::memory::kernels
