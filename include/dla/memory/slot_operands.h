// bf16 copies of the slot pass's per-chunk operands (dla/memory/slot_pass.h), which its bf16 kernels read.
// The per-chunk stages (dla/memory/intra_chunk.h) write them next to their float32 terms when asked, so that
// the slot pass need not convert them. Shapes as in slot_pass.h.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::memory {

/// Each one undefined where not written: the slot pass then converts the float32 term itself.
struct SlotOperandCopies {
  at::Tensor transported_q_BHNCK, k_to_end_BHNCK, w_BHNCK, t_inverse_BHNCC, source_v_BHNCV;
};

/// How many tensors SlotOperandCopies holds: autograd functions pass them as a list in its order.
inline constexpr int kNumSlotOperandCopies = 5;

}  // namespace dla::memory
