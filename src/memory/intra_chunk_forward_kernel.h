// The CUDA kernel of the per-chunk stages' forward (dla/memory/intra_chunk.h) after prepare_chunks: each
// chunk's λ-weighted reads of its own keys, intra = (R ⊙ Λ) v' with R = P T (R = P for SSD), the transported
// queries q̃ = exp(γ) ⊙ q − P W (exp(γ) ⊙ q for SSD) and v' = β v, in one thread block per chunk on TF32
// tensor cores. Same conventions as intra_chunk_gradients_kernel.h.
#pragma once

#include <cstdint>

#include "intra_chunk_gradients_kernel.h"

namespace dla::memory::kernels {

struct IntraChunkForwardArgs {
  ChunkedRows q, k;        ///< [B, H, N, C, K]
  ChunkedRows v;           ///< [B, H, N, C, V]
  const float* beta;       ///< [chunks, C]; null for SSD
  const float* lam_in;     ///< Λ [chunks, C, C]
  const float* gamma;      ///< γ [chunks, C], the chunk-local cumsum of the log gates
  const float* t_inverse;  ///< T [chunks, C, C]; null for SSD
  const float* w;          ///< W [chunks, C, K]; null for SSD
  float* intra;            ///< [chunks, C, V]
  float* transported_q;    ///< q̃ [chunks, C, K]
  float* source_v;         ///< v' = β v [chunks, C, V]; null for SSD
  /// bf16 copies of q̃ and v' in their layouts, for the slot pass's bf16 kernels; null: not written.
  void *transported_q_bf16, *source_v_bf16;
};

/// Whether the kernel runs these dims on the current device: as supports_intra_chunk_gradients.
bool supports_intra_chunk_forward(const IntraChunkGradientDims& dims);

/// nullptr on success, else the CUDA error's text.
const char* intra_chunk_forward(const IntraChunkForwardArgs& args, const IntraChunkGradientDims& dims,
                                void* stream);

}  // namespace dla::memory::kernels
