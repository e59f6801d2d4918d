// The CUDA kernels of chunk_level_weights (dla/memory/chunk_level_weights.h) behind a plain C++ interface, so
// that only the .cu file is compiled by nvcc. A block per chunk, a warp per query: each key's slot is found
// in the query's row of the segment table, and the query's weights written, or, backward, their gradients
// summed into the query's λ levels and confidences; no [.., C, C] index grid is formed.
#pragma once

#include <cstdint>

namespace dla::memory::kernels {

/// The most slots and the longest chunk the kernels take.
constexpr int64_t kMaxLevelSlots = 64;
constexpr int64_t kMaxLevelChunk = 128;

/// Row counts and the table's strides. The segment table's rows (int64 [Bt, Ht, N, C, S]) and the state keys
/// (int64 [Bt, Ht, N, S]) are contiguous, with Bt, Ht either B, H or 1 (broadcast: stride 0 below).
struct ChunkLevelDims {
  int64_t batch, heads, chunks, chunk_size, slots;
  int64_t table_batch_stride;  ///< between batches, in rows of S entries: Ht·N·C, or 0
  int64_t table_head_stride;   ///< between heads, in rows: N·C, or 0
};

/// Whether the kernels take these dims: chunks of at most kMaxLevelChunk, at most kMaxLevelSlots slots,
/// sequences shorter than 2^30 tokens (positions within a chunk are int32) and a chunk's rows within shared
/// memory.
bool supports_chunk_levels(const ChunkLevelDims& dims);

/// intra[.., i, j] = λ[level] · conf[slot] of key j for query i (λ_0 and 1 on the diagonal),
/// state[.., i, s] = λ[slot + 1] · conf[slot] of chunk-start state s, 0 where it has no slot. lam is
/// contiguous float32 [B, H, N, C, S + 1], conf the same as [B, H, N, C, S] or null (all 1). nullptr on
/// success, else the CUDA error's text. `stream` is a cudaStream_t.
const char* chunk_level_weights(const int64_t* rows, const int64_t* state_keys, const float* lam,
                                const float* conf, float* intra, float* state, const ChunkLevelDims& dims,
                                void* stream);

/// The gradients of lam and conf (d_conf may be null) from those of intra and state, all contiguous.
const char* chunk_level_gradients(const int64_t* rows, const int64_t* state_keys, const float* lam,
                                  const float* conf, const float* d_intra, const float* d_state, float* d_lam,
                                  float* d_conf, const ChunkLevelDims& dims, void* stream);

}  // namespace dla::memory::kernels
