// The λ weights with which the chunkwise multi-state form reads (spec/dla.md §4.2): each query's weight on
// every key of its own chunk and on every slot state at its chunk's start, from the segment table, the
// query's λ levels and its slots' confidences. One function, two implementations: LibTorch gathers over the
// [.., C, C] grid of key slots that autograd differentiates, and CUDA kernels that search each key's slot
// per query and whose backward sums the gradients by slot. Shapes: B batch, H heads, N chunks, C chunk
// length, S slots, L = S + 1 levels.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::memory {

struct ChunkLevelInputs {
  at::Tensor rows_BHNCS;       ///< int64 [B|1, H|1, N, C, S]: each query's row of the segment table
  at::Tensor state_keys_BHNS;  ///< int64 [B|1, H|1, N, S]: the slot starts at each chunk's first token
  at::Tensor lam_BHNCL;        ///< each query's λ levels, level 0 its own token
  at::Tensor conf_BHNCS;       ///< each query's slot confidences like rows_BHNCS; undefined: all 1
};

struct ChunkLevelWeights {
  at::Tensor intra_BHNCC;  ///< [.., i, j]: λ_0 for j = i, else λ_{s+1} · conf_s with s the slot of key j
  at::Tensor state_BHNCS;  ///< [.., i, s]: the same for chunk-start state s; 0 where it has no slot
};

/// Whether chunk_level_weights with `kernel` set runs these inputs on the CUDA kernels: CUDA float32 inputs
/// with C and S within the kernels' limits.
bool chunk_level_weights_use_cuda_kernels(const ChunkLevelInputs& in);

/// Above the diagonal (keys after the query) the weights are finite but meaningless: the decay matrix zeroes
/// them. With `kernel`, inputs the CUDA kernels take run on them; others take the LibTorch path.
ChunkLevelWeights chunk_level_weights(const ChunkLevelInputs& in, bool kernel);

}  // namespace dla::memory
