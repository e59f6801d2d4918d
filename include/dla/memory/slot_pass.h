// The sequential part of the multi-state chunkwise form (spec/dla.md §4.2): chunk by chunk, the queries
// read the slot states, every state follows the chunk's transition, states move to their slots at the
// chunk's end and the chunk's writes land in theirs. One function, two implementations: a loop of LibTorch
// ops that autograd differentiates, and a fused one whose backward is written out and keeps only each
// chunk's slot states, with CUDA kernels for its sequential parts (docs/memory/policies.md). Shapes: B batch,
// H heads, N chunks, C chunk length, K key dim, V value dim, S slots.
#pragma once

#include <ATen/core/Tensor.h>

#include "dla/memory/slot_operands.h"

namespace dla::memory {

struct SlotPassInputs {
  at::Tensor transported_q_BHNCK;  ///< each query as it reads a chunk-start state
  at::Tensor read_weight_BHNCS;    ///< λ · confidence with which each query reads each slot (0: not read)
  at::Tensor k_to_end_BHNCK;       ///< keys decayed to their chunk's end
  at::Tensor w_BHNCK;              ///< the delta rule's WY term W; undefined for SSD
  at::Tensor t_inverse_BHNCC;      ///< the delta rule's (I + A)⁻¹; undefined for SSD
  at::Tensor source_v_BHNCV;       ///< what each token writes (β v for the delta rule)
  at::Tensor chunk_decay_BHN;      ///< exp(γ_last) of each chunk
  at::Tensor state_move_BHNSS;     ///< [r, s] = 1 when slot s's state moves to slot r at the chunk's end
  at::Tensor token_move_BHNSC;     ///< [r, c] = 1 when token c's write lands in slot r
  /// Keep the per-chunk slot states and their gradients in bf16 where the CUDA kernels alone read them (the
  /// reads and gradient kernels both run): half their memory and traffic, at bf16's precision. The kernels
  /// then multiply on bf16 tensor cores (slot_pass_uses_bf16_operands for the sequential ones); the states
  /// are still carried, and every product accumulates, in float32. memory::chunkwise asks for it for 16-bit
  /// inputs.
  bool compact_states = false;
  /// bf16 copies of the operands above, which the bf16 kernels then read instead of converting them; any of
  /// them may be undefined. No gradient flows through them.
  SlotOperandCopies bf16 = {};
};

struct SlotPassResult {
  at::Tensor inter_BHNCV;         ///< what the queries read from the chunk-start states (before scale)
  at::Tensor final_states_BHSKV;  ///< the slot states after the last chunk
};

/// From empty states. `fused` picks the hand-written backward; both compute in float32 (float64 when an
/// input is float64) and return in that dtype. The fused one runs as CUDA kernels where
/// slot_pass_uses_cuda_kernels says so.
SlotPassResult slot_pass(const SlotPassInputs& in, bool fused);

/// Whether the fused slot pass runs on these inputs as CUDA kernels: float32 CUDA tensors while TF32 is
/// allowed (the kernels multiply on tensor cores in TF32; memory::chunkwise allows it for 16-bit inputs),
/// at most 16 slots, C and K multiples of 16, V of 4, and shared memory for the states of 16 value columns.
/// Otherwise it runs as loops of LibTorch ops.
bool slot_pass_uses_cuda_kernels(const SlotPassInputs& in);

/// Whether, running as CUDA kernels, the fused slot pass's backward also gets its input gradients from their
/// own kernels: V a multiple of 32 and their buffers within shared memory. Otherwise from batched LibTorch
/// products.
bool slot_pass_gradients_use_cuda_kernels(const SlotPassInputs& in);

/// Whether, running as CUDA kernels, the fused slot pass's reads from the chunks' start states run on their
/// own kernel: C 32 or 64, K and V multiples of 32. Otherwise as one batched LibTorch matmul.
bool slot_pass_reads_use_cuda_kernel(const SlotPassInputs& in);

/// Whether the fused slot pass keeps its per-chunk states in bf16: compact_states is asked for, and both the
/// reads and the input gradients run on their kernels.
bool slot_pass_compacts_states(const SlotPassInputs& in);

/// Whether the fused slot pass's sequential kernels, forward and backward, run on bf16 tensor cores (the
/// states still carried in float32): it compacts its states, and C = 64, K = 128, S ≤ 8 and V is a multiple
/// of 16.
bool slot_pass_uses_bf16_operands(const SlotPassInputs& in);

/// The sizes of a slot pass's inputs, known before they are computed.
struct SlotPassShape {
  int64_t batch, heads, chunks, chunk_size, key_dim, value_dim, slots;
};

/// slot_pass_uses_bf16_operands for float32 inputs of this shape on `device`, with compact states asked for:
/// whether the stages that produce them should write SlotPassInputs::bf16 too.
bool slot_pass_takes_bf16_copies(const SlotPassShape& shape, const at::Device& device);

}  // namespace dla::memory
