// The per-chunk stages of the multi-state chunkwise form (spec/dla.md §4.2) around the slot pass: each
// chunk's λ-weighted reads of its own keys, and the terms the slot pass carries (the queries transported to
// the chunk's start, the keys decayed to its end, the delta rule's WY terms). One function, two
// implementations: LibTorch ops that autograd differentiates, and an autograd function with the same forward
// whose backward is written out (docs/memory/policies.md), which keeps only its inputs and needs a fraction
// of the kernels and memory. Shapes: B batch, H heads, N chunks, C chunk length, K key dim, V value dim.
#pragma once

#include <ATen/core/Tensor.h>

#include "dla/memory/slot_operands.h"

namespace dla::memory {

/// Chunked inputs in the compute dtype (lam_in's). q, k and v may also be views of other layouts and dtypes,
/// e.g. a [B, T, H, ·] bf16 tensor seen as [B, H, N, C, ·]: the CUDA kernels read them in place,
/// and the LibTorch-op paths convert them first.
struct IntraChunkInputs {
  at::Tensor q_BHNCK, k_BHNCK, v_BHNCV;
  at::Tensor g_BHNC;        ///< log gates
  at::Tensor beta_BHNC;     ///< the delta rule's write strengths; undefined for SSD
  at::Tensor lam_in_BHNCC;  ///< each query's read weight on each key of its chunk
  /// Write bf16 copies of the slot pass's operands too (IntraChunkTerms::bf16), where the forward runs on its
  /// CUDA kernels: memory::chunkwise asks for them where the slot pass runs its bf16 kernels.
  bool bf16_copies = false;
};

struct IntraChunkTerms {
  at::Tensor intra_BHNCV;          ///< what each query reads from its chunk's keys (before scale)
  at::Tensor transported_q_BHNCK;  ///< each query as it reads a chunk-start state
  at::Tensor k_to_end_BHNCK;       ///< keys decayed to their chunk's end
  at::Tensor w_BHNCK;              ///< the delta rule's W = T (β exp(γ) ⊙ k); undefined for SSD
  at::Tensor t_inverse_BHNCC;      ///< the delta rule's T = (I + A)⁻¹; undefined for SSD
  at::Tensor source_v_BHNCV;       ///< what each token writes: β v for the delta rule, else v
  at::Tensor chunk_decay_BHN;      ///< exp(γ_last) of each chunk
  SlotOperandCopies bf16 = {};     ///< where asked for and written; no gradient flows through them
};

/// `fused` picks the written-out backward.
IntraChunkTerms intra_chunk_terms(const IntraChunkInputs& in, bool fused);

/// Whether the forward of intra_chunk_terms(in, true), called now, forms its products (intra, q̃, v') in one
/// CUDA kernel after prepare_chunks: as intra_chunk_backward_uses_cuda_kernel, and prepare_chunks applies
/// (ops::fused::chunk_stages_apply). Otherwise as LibTorch ops.
bool intra_chunk_forward_uses_cuda_kernel(const IntraChunkInputs& in);

/// Whether the written-out backward of intra_chunk_terms(in, true), called now, runs as one CUDA kernel:
/// float32 compute dtype and CUDA q, k and v of one dtype, float32 or bf16, while TF32 is allowed (its
/// products run on tensor cores in TF32, as the forward's chunk kernel), C = 64, K of 64 or 128, V a multiple
/// of 32. Otherwise as LibTorch ops.
bool intra_chunk_backward_uses_cuda_kernel(const IntraChunkInputs& in);

}  // namespace dla::memory
