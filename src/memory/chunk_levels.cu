// CUDA kernels of chunk_level_weights (chunk_levels_kernel.h): a thread block per chunk. The block stages
// the chunk's rows of the segment table (as int32 positions relative to the chunk's first key), its λ
// levels, confidences and state keys in shared memory once; then a warp per query takes the chunk's keys
// (and the chunk-start states) lane by lane. The backward sums each lane's gradients by slot with warp
// shuffles, so every query's sums are deterministic. (A warp per query, each finding its place with 64-bit
// divisions and staging its own row, spent most of its instructions on that set-up.)
#include <cuda_runtime.h>

#include <climits>

#include "../ops/cuda_launch.cuh"
#include "chunk_levels_kernel.h"

namespace dla::memory::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kNoStart = INT_MAX;  // an empty slot: no key is at or past its start

/// A chunk's inputs, staged by its block: rows of C · S starts, C · (S + 1) λ levels, C · S confidences (1
/// where absent) and the S state keys. Positions are relative to the chunk's first key.
struct ChunkRows {
  int* starts;
  float* lam;
  float* conf;
  int* state_keys;

  __device__ ChunkRows(int* shared, int C, int S)
      : starts(shared),
        lam(reinterpret_cast<float*>(shared + C * S)),
        conf(lam + C * (S + 1)),
        state_keys(reinterpret_cast<int*>(conf + C * S)) {}

  static int64_t bytes(int64_t C, int64_t S) { return (C * S + C * (S + 1) + C * S + S) * 4; }
};

/// Stages chunk blockIdx.x's rows; its first query is row blockIdx.x · C of lam and conf.
__device__ ChunkRows stage_chunk(int* shared, const int64_t* rows, const int64_t* state_keys,
                                 const float* lam, const float* conf, const ChunkLevelDims& d) {
  const int C = static_cast<int>(d.chunk_size), S = static_cast<int>(d.slots);
  ChunkRows chunk(shared, C, S);
  const int64_t n = blockIdx.x % d.chunks, head_batch = blockIdx.x / d.chunks;
  const int64_t first_row =
      (head_batch / d.heads) * d.table_batch_stride + (head_batch % d.heads) * d.table_head_stride + n * C;
  const int64_t first_key = n * C, first_query = static_cast<int64_t>(blockIdx.x) * C;
  for (int e = static_cast<int>(threadIdx.x); e < C * S; e += kThreads) {
    const int64_t start = __ldg(rows + first_row * S + e);
    chunk.starts[e] = start >= 0 ? static_cast<int>(start - first_key) : kNoStart;
    chunk.conf[e] = conf != nullptr ? __ldg(conf + first_query * S + e) : 1.0f;
  }
  for (int e = static_cast<int>(threadIdx.x); e < C * (S + 1); e += kThreads)
    chunk.lam[e] = __ldg(lam + first_query * (S + 1) + e);
  for (int s = static_cast<int>(threadIdx.x); s < S; s += kThreads)
    chunk.state_keys[s] = static_cast<int>(__ldg(state_keys + (first_row / C) * S + s) - first_key);
  __syncthreads();
  return chunk;
}

/// The newest slot whose segment starts at or before `key` (slots run from the newest), else −1.
__device__ int slot_of(const int* starts, int S, int key) {
  for (int s = 0; s < S; ++s) {
    if (starts[s] <= key) return s;
  }
  return -1;
}

__global__ void __launch_bounds__(kThreads)
    level_weights_kernel(const int64_t* __restrict__ rows, const int64_t* __restrict__ state_keys,
                         const float* __restrict__ lam, const float* __restrict__ conf,
                         float* __restrict__ intra, float* __restrict__ state, ChunkLevelDims d) {
  extern __shared__ int shared[];
  const ChunkRows chunk = stage_chunk(shared, rows, state_keys, lam, conf, d);
  const int C = static_cast<int>(d.chunk_size), S = static_cast<int>(d.slots);
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  for (int query = warp; query < C; query += kWarps) {
    const int64_t r = static_cast<int64_t>(blockIdx.x) * C + query;
    const int* starts = chunk.starts + query * S;
    const float* lam_row = chunk.lam + query * (S + 1);
    const float* conf_row = chunk.conf + query * S;
    for (int j = lane; j < C; j += 32) {
      const int slot = max(slot_of(starts, S, j), 0);
      intra[r * C + j] = j == query ? lam_row[0] : lam_row[slot + 1] * conf_row[slot];
    }
    for (int s = lane; s < S; s += 32) {
      const int slot = slot_of(starts, S, chunk.state_keys[s]);
      state[r * S + s] = slot >= 0 ? lam_row[slot + 1] * conf_row[slot] : 0.0f;
    }
  }
}

__device__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2)
    x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

/// With each lane holding kKeysPerLane of a chunk's keys and kStatesPerLane of its states.
template <int kKeysPerLane, int kStatesPerLane>
__global__ void __launch_bounds__(kThreads)
    level_gradients_kernel(const int64_t* __restrict__ rows, const int64_t* __restrict__ state_keys,
                           const float* __restrict__ lam, const float* __restrict__ conf,
                           const float* __restrict__ d_intra, const float* __restrict__ d_state,
                           float* __restrict__ d_lam, float* __restrict__ d_conf, ChunkLevelDims d) {
  extern __shared__ int shared[];
  __shared__ float slot_sums[kWarps][kMaxLevelSlots + 1];
  const ChunkRows chunk = stage_chunk(shared, rows, state_keys, lam, conf, d);
  const int C = static_cast<int>(d.chunk_size), S = static_cast<int>(d.slots);
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  float* sums = slot_sums[warp];
  for (int query = warp; query < C; query += kWarps) {
    const int64_t r = static_cast<int64_t>(blockIdx.x) * C + query;
    const int* starts = chunk.starts + query * S;
    // Each of the lane's keys and states adds its gradient to one slot's λ and confidence, or (the query's
    // own key, slot −1 here) to λ_0 alone; −2 adds nothing.
    int key_slot[kKeysPerLane], state_slot[kStatesPerLane];
    float key_grad[kKeysPerLane], state_grad[kStatesPerLane];
    uint64_t used = 0;  // bit slot + 1 for each slot the lane adds to
#pragma unroll
    for (int t = 0; t < kKeysPerLane; ++t) {
      const int j = lane + 32 * t;
      key_slot[t] = -2;
      key_grad[t] = 0.0f;
      if (j < C) {
        key_slot[t] = j == query ? -1 : max(slot_of(starts, S, j), 0);
        key_grad[t] = __ldg(d_intra + r * C + j);
        used |= uint64_t{1} << (key_slot[t] + 1);
      }
    }
#pragma unroll
    for (int t = 0; t < kStatesPerLane; ++t) {
      const int s = lane + 32 * t;
      state_slot[t] = -2;
      state_grad[t] = 0.0f;
      if (s < S) {
        const int slot = slot_of(starts, S, chunk.state_keys[s]);
        if (slot >= 0) {
          state_slot[t] = slot;
          state_grad[t] = __ldg(d_state + r * S + s);
          used |= uint64_t{1} << (slot + 1);
        }
      }
    }
    used = __reduce_or_sync(kFullMask, static_cast<unsigned>(used)) |
           uint64_t{__reduce_or_sync(kFullMask, static_cast<unsigned>(used >> 32))} << 32;
    // A slot's λ and confidence both get its entries' gradients times the other factor: one sum per slot,
    // staged at slot + 1 (zero for the slots nothing adds to), then the lanes write the row's gradients.
    for (int l = lane; l <= S; l += 32)
      sums[l] = 0.0f;
    __syncwarp();
    for (uint64_t rest = used; rest != 0; rest &= rest - 1) {
      const int slot = __ffsll(static_cast<long long>(rest)) - 2;
      float in_slot = 0.0f;
#pragma unroll
      for (int t = 0; t < kKeysPerLane; ++t) {
        if (key_slot[t] == slot) in_slot += key_grad[t];
      }
#pragma unroll
      for (int t = 0; t < kStatesPerLane; ++t) {
        if (state_slot[t] == slot) in_slot += state_grad[t];
      }
      in_slot = warp_sum(in_slot);
      if (lane == 0) sums[slot + 1] = in_slot;
    }
    __syncwarp();
    const float* lam_row = chunk.lam + query * (S + 1);
    const float* conf_row = chunk.conf + query * S;
    for (int l = lane; l <= S; l += 32)
      d_lam[r * (S + 1) + l] = l == 0 ? sums[0] : sums[l] * conf_row[l - 1];
    if (d_conf != nullptr) {
      for (int s = lane; s < S; s += 32)
        d_conf[r * S + s] = sums[s + 1] * lam_row[s + 1];
    }
    __syncwarp();  // the sums are read before the next query overwrites them
  }
}

template <class Kernel, class... Args>
const char* launch(Kernel kernel, const ChunkLevelDims& d, void* stream, Args... args) {
  const int64_t bytes = ChunkRows::bytes(d.chunk_size, d.slots);
  if (bytes > 48 * 1024) {
    const cudaError_t error =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (error != cudaSuccess) return cudaGetErrorString(error);
  }
  const int64_t blocks = d.batch * d.heads * d.chunks;
  kernel<<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes),
           static_cast<cudaStream_t>(stream)>>>(args..., d);
  return dla::ops::kernels::launched();
}

template <int kKeysPerLane>
const char* launch_gradients(const ChunkLevelDims& d, void* stream, const int64_t* rows,
                             const int64_t* state_keys, const float* lam, const float* conf,
                             const float* d_intra, const float* d_state, float* d_lam, float* d_conf) {
  return d.slots <= 32 ? launch(level_gradients_kernel<kKeysPerLane, 1>, d, stream, rows, state_keys, lam,
                                conf, d_intra, d_state, d_lam, d_conf)
                       : launch(level_gradients_kernel<kKeysPerLane, 2>, d, stream, rows, state_keys, lam,
                                conf, d_intra, d_state, d_lam, d_conf);
}

}  // namespace

bool supports_chunk_levels(const ChunkLevelDims& dims) {
  const int64_t tokens = dims.chunks * dims.chunk_size, blocks = dims.batch * dims.heads * dims.chunks;
  return dims.chunk_size >= 1 && dims.chunk_size <= kMaxLevelChunk && dims.slots >= 1 &&
         dims.slots <= kMaxLevelSlots && tokens < (int64_t{1} << 30) && blocks < (int64_t{1} << 31) &&
         ChunkRows::bytes(dims.chunk_size, dims.slots) <= dla::ops::kernels::max_shared_bytes() - 8 * 1024;
}

const char* chunk_level_weights(const int64_t* rows, const int64_t* state_keys, const float* lam,
                                const float* conf, float* intra, float* state, const ChunkLevelDims& dims,
                                void* stream) {
  if (dims.batch * dims.heads * dims.chunks * dims.chunk_size == 0) return nullptr;
  return launch(level_weights_kernel, dims, stream, rows, state_keys, lam, conf, intra, state);
}

const char* chunk_level_gradients(const int64_t* rows, const int64_t* state_keys, const float* lam,
                                  const float* conf, const float* d_intra, const float* d_state, float* d_lam,
                                  float* d_conf, const ChunkLevelDims& dims, void* stream) {
  if (dims.batch * dims.heads * dims.chunks * dims.chunk_size == 0) return nullptr;
  switch ((dims.chunk_size + 31) / 32) {
    case 1:
      return launch_gradients<1>(dims, stream, rows, state_keys, lam, conf, d_intra, d_state, d_lam, d_conf);
    case 2:
      return launch_gradients<2>(dims, stream, rows, state_keys, lam, conf, d_intra, d_state, d_lam, d_conf);
    case 3:
      return launch_gradients<3>(dims, stream, rows, state_keys, lam, conf, d_intra, d_state, d_lam, d_conf);
    default:
      return launch_gradients<4>(dims, stream, rows, state_keys, lam, conf, d_intra, d_state, d_lam, d_conf);
  }
}

}  // namespace dla::memory::kernels
