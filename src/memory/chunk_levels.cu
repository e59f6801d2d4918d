// CUDA kernels of chunk_level_weights (chunk_levels_kernel.h): a warp per query of a chunk. The warp holds
// the query's row of the segment table, its λ levels and confidences in shared memory; its lanes take the
// chunk's keys (and the chunk-start states) in turn. The backward sums each lane's gradients by slot with
// warp shuffles, so every query's sums are deterministic.
#include <cuda_runtime.h>

#include <algorithm>

#include "../ops/cuda_launch.cuh"
#include "chunk_levels_kernel.h"

namespace dla::memory::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kKeysPerLane = static_cast<int>(kMaxLevelChunk / 32);
constexpr int kStatesPerLane = static_cast<int>(kMaxLevelSlots / 32);
constexpr unsigned kFullMask = 0xffffffffu;

/// One query's row of the table with its λ and confidences, staged by its warp.
struct QueryRow {
  int64_t starts[kMaxLevelSlots];
  float lam[kMaxLevelSlots + 1];
  float conf[kMaxLevelSlots];
};

/// Where query r (of B·H·N·C) finds its inputs.
struct QueryPlace {
  int64_t table_row;  ///< its row of the segment table
  int64_t keys_row;   ///< its chunk's row of the state keys
  int64_t first_key;  ///< the position of its chunk's first token
  int query;          ///< its place in the chunk
};

__device__ QueryPlace place_of(int64_t r, const ChunkLevelDims& d) {
  const int64_t chunk = r / d.chunk_size, n = chunk % d.chunks, head_batch = chunk / d.chunks;
  const int64_t first_row = (head_batch / d.heads) * d.table_batch_stride +
                            (head_batch % d.heads) * d.table_head_stride + n * d.chunk_size;
  return {first_row + r % d.chunk_size, first_row / d.chunk_size, n * d.chunk_size,
          static_cast<int>(r % d.chunk_size)};
}

/// Stages query r's row; the warp's lanes must all call it.
__device__ void stage_row(QueryRow& row, int64_t r, const QueryPlace& place, const int64_t* rows,
                          const float* lam, const float* conf, int slots, int lane) {
  __syncwarp();  // the row of the warp's previous query is no longer read
  for (int s = lane; s < slots; s += 32) {
    row.starts[s] = __ldg(rows + place.table_row * slots + s);
    row.conf[s] = conf != nullptr ? __ldg(conf + r * slots + s) : 1.0f;
  }
  for (int l = lane; l <= slots; l += 32)
    row.lam[l] = __ldg(lam + r * (slots + 1) + l);
  __syncwarp();
}

/// The newest slot whose segment starts at or before `key` (slots run from the newest), else −1.
__device__ int slot_of(const QueryRow& row, int slots, int64_t key) {
  for (int s = 0; s < slots; ++s) {
    const int64_t start = row.starts[s];
    if (start >= 0 && start <= key) return s;
  }
  return -1;
}

/// Runs body(row, r, place, lane) for each query r of the warp's share, with its row staged.
template <typename Body>
__device__ void for_each_query(const ChunkLevelDims& d, const int64_t* rows, const float* lam,
                               const float* conf, Body&& body) {
  __shared__ QueryRow staged[kWarps];
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int64_t queries = d.batch * d.heads * d.chunks * d.chunk_size;
  QueryRow& row = staged[warp];
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp; r < queries;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const QueryPlace place = place_of(r, d);
    stage_row(row, r, place, rows, lam, conf, static_cast<int>(d.slots), lane);
    body(row, r, place, lane);
  }
}

__global__ void __launch_bounds__(kThreads)
    level_weights_kernel(const int64_t* __restrict__ rows, const int64_t* __restrict__ state_keys,
                         const float* __restrict__ lam, const float* __restrict__ conf,
                         float* __restrict__ intra, float* __restrict__ state, ChunkLevelDims d) {
  const int slots = static_cast<int>(d.slots), C = static_cast<int>(d.chunk_size);
  for_each_query(d, rows, lam, conf, [&](const QueryRow& row, int64_t r, const QueryPlace& place, int lane) {
    for (int j = lane; j < C; j += 32) {
      const int slot = max(slot_of(row, slots, place.first_key + j), 0);
      intra[r * C + j] = j == place.query ? row.lam[0] : row.lam[slot + 1] * row.conf[slot];
    }
    for (int s = lane; s < slots; s += 32) {
      const int slot = slot_of(row, slots, __ldg(state_keys + place.keys_row * slots + s));
      state[r * slots + s] = slot >= 0 ? row.lam[slot + 1] * row.conf[slot] : 0.0f;
    }
  });
}

__device__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2)
    x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

__global__ void __launch_bounds__(kThreads)
    level_gradients_kernel(const int64_t* __restrict__ rows, const int64_t* __restrict__ state_keys,
                           const float* __restrict__ lam, const float* __restrict__ conf,
                           const float* __restrict__ d_intra, const float* __restrict__ d_state,
                           float* __restrict__ d_lam, float* __restrict__ d_conf, ChunkLevelDims d) {
  __shared__ float slot_sums[kWarps][kMaxLevelSlots + 1];
  const int slots = static_cast<int>(d.slots), C = static_cast<int>(d.chunk_size);
  for_each_query(d, rows, lam, conf, [&](const QueryRow& row, int64_t r, const QueryPlace& place, int lane) {
    // Each of the lane's keys and states adds its gradient to one slot's λ and confidence, or (the query's
    // own key, slot −1 here) to λ_0 alone.
    int key_slot[kKeysPerLane], state_slot[kStatesPerLane];
    float key_grad[kKeysPerLane], state_grad[kStatesPerLane];
#pragma unroll
    for (int t = 0; t < kKeysPerLane; ++t) {
      const int j = lane + 32 * t;
      key_slot[t] = -2;  // past the chunk: adds nothing
      key_grad[t] = 0.0f;
      if (j < C) {
        key_slot[t] = j == place.query ? -1 : max(slot_of(row, slots, place.first_key + j), 0);
        key_grad[t] = __ldg(d_intra + r * C + j);
      }
    }
#pragma unroll
    for (int t = 0; t < kStatesPerLane; ++t) {
      const int s = lane + 32 * t;
      state_slot[t] = -2;
      state_grad[t] = 0.0f;
      if (s < slots) {
        const int slot = slot_of(row, slots, __ldg(state_keys + place.keys_row * slots + s));
        state_slot[t] = slot >= 0 ? slot : -2;
        state_grad[t] = __ldg(d_state + r * slots + s);
      }
    }
    // A slot's λ and confidence both get its entries' gradients times the other factor: one sum per slot,
    // staged at slot + 1, and then the lanes write the row's gradients together.
    float* sums = slot_sums[threadIdx.x / 32];
    for (int slot = -1; slot < slots; ++slot) {
      float in_slot = 0.0f;
#pragma unroll
      for (int t = 0; t < kKeysPerLane; ++t) {
        if (key_slot[t] == slot) in_slot += key_grad[t];
      }
#pragma unroll
      for (int t = 0; t < kStatesPerLane; ++t) {
        if (state_slot[t] == slot) in_slot += state_grad[t];
      }
      // Most slots get nothing from a query (no key or state of the chunk in them): one vote, not a sum.
      if (__any_sync(kFullMask, in_slot != 0.0f)) in_slot = warp_sum(in_slot);
      if (lane == 0) sums[slot + 1] = in_slot;
    }
    __syncwarp();  // lane 0's sums, for every lane; the next query overwrites them after stage_row's barrier
    for (int l = lane; l <= slots; l += 32)
      d_lam[r * (slots + 1) + l] = l == 0 ? sums[0] : sums[l] * row.conf[l - 1];
    if (d_conf == nullptr) return;
    for (int s = lane; s < slots; s += 32)
      d_conf[r * slots + s] = sums[s + 1] * row.lam[s + 1];
  });
}

unsigned blocks_for(const ChunkLevelDims& d) {
  const int64_t queries = d.batch * d.heads * d.chunks * d.chunk_size;
  return static_cast<unsigned>(std::clamp<int64_t>((queries + kWarps - 1) / kWarps, 1, int64_t{1} << 20));
}

}  // namespace

const char* chunk_level_weights(const int64_t* rows, const int64_t* state_keys, const float* lam,
                                const float* conf, float* intra, float* state, const ChunkLevelDims& dims,
                                void* stream) {
  if (dims.batch * dims.heads * dims.chunks * dims.chunk_size == 0) return nullptr;
  level_weights_kernel<<<blocks_for(dims), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      rows, state_keys, lam, conf, intra, state, dims);
  return dla::ops::kernels::launched();
}

const char* chunk_level_gradients(const int64_t* rows, const int64_t* state_keys, const float* lam,
                                  const float* conf, const float* d_intra, const float* d_state, float* d_lam,
                                  float* d_conf, const ChunkLevelDims& dims, void* stream) {
  if (dims.batch * dims.heads * dims.chunks * dims.chunk_size == 0) return nullptr;
  level_gradients_kernel<<<blocks_for(dims), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      rows, state_keys, lam, conf, d_intra, d_state, d_lam, d_conf, dims);
  return dla::ops::kernels::launched();
}

}  // namespace dla::memory::kernels
