// CUDA kernel of the multi-state reads (slot_reads_kernel.h): inter[c] = Σ_s w[c, s] (q̃ X_s)[c] for every
// chunk. One thread block per (chunk, 128 value columns) with a warp per 32 × 32 block of the output: it
// holds that block of q̃ X_s in registers while the slot's states stream through shared memory 32 keys at a
// time (the next stages' copies in flight), and as the slot ends adds it, each row scaled by its read weight,
// to the block it writes out. The states are read once, and only those of slots live at the chunk's start
// (the others hold zero); the weighted queries are never stored.
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "../ops/async_copy.cuh"
#include "../ops/cuda_launch.cuh"
#include "slot_reads_kernel.h"
#include "warp_blocks.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's slot-read kernel uses TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using dla::ops::kernels::copy_rows_async;

constexpr int kColumns = 128;  // value columns per block: four warp blocks across
constexpr int kColumnBlocks = kColumns / kBlock;
constexpr int kStageKeys = 32;  // key rows of one slot's states per stage
constexpr int kBuffers = 4;     // stage buffers: three stages' copies in flight while one computes
constexpr int kMaxSlots = 16;

struct ReadDims {
  int chunks, C, K, V, S;

  /// q̃ rows 4 floats longer than a multiple of 32 put the lanes of an A fragment load on distinct banks, the
  /// stage rows 8 floats longer those of a B fragment load (read down its columns).
  __host__ __device__ int q_ld() const { return K + 4; }
  __host__ __device__ int stage_ld() const { return kColumns + 8; }
  __host__ __device__ int stage_floats() const { return kStageKeys * stage_ld(); }
  __host__ __device__ int shared_floats() const { return C * q_ld() + kBuffers * stage_floats() + S * C; }
};

template <int kThreads, class TState>
__global__ void __launch_bounds__(kThreads) slot_reads_kernel(SlotReadArgs a, ReadDims d) {
  extern __shared__ __align__(128) float shared[];
  const int C = d.C, K = d.K, V = d.V, S = d.S, q_ld = d.q_ld(), stage_ld = d.stage_ld();
  // q̃ in the states' type: with bf16 states, the products q̃ X_s run on bf16 tensor cores.
  auto* q = reinterpret_cast<TState*>(shared);  // q̃ [C, q_ld], or [C, K + 8] in bf16
  const int q_ld_of_state = std::is_same_v<TState, float> ? q_ld : K + 8;
  float* stages = shared + C * q_ld;                      // kBuffers × X_s [32 keys, stage_ld]
  float* weights = stages + kBuffers * d.stage_floats();  // [S, C]: a slot's weights as one row

  __shared__ int read_slots[kMaxSlots];  // the slots live at the chunk's start: the others hold zero
  __shared__ int read_count;
  const size_t chunk = static_cast<size_t>(blockIdx.y) * d.chunks + blockIdx.x;
  const int first_column = static_cast<int>(blockIdx.z) * kColumns;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row = (warp / kColumnBlocks) * kBlock, column = (warp % kColumnBlocks) * kBlock;
  const bool active = first_column + column < V;  // the last column tile may be narrower

  if constexpr (std::is_same_v<TState, float>) {
    copy_rows_async<kThreads>(q, q_ld, a.transported_q + chunk * C * K, C, K);
  } else {
    load_as_bf16<kThreads>(q, q_ld_of_state, a.transported_q + chunk * C * K, C, K);
  }
  const float* chunk_weights = a.read_weight + chunk * C * S;
  for (int i = threadIdx.x; i < C * S; i += kThreads)
    weights[(i % S) * C + i / S] = __ldg(chunk_weights + i);
  if (threadIdx.x == 0) {
    const unsigned live = slots_live_at_start(a.live_slots, chunk, static_cast<int>(blockIdx.x), S);
    int count = 0;
    for (int s = 0; s < S; ++s)
      if ((live >> s) & 1u) read_slots[count++] = s;
    read_count = count;
  }
  __syncthreads();

  WarpBlock slot_reads, reads;
  clear(slot_reads);
  clear(reads);
  const int per_slot = K / kStageKeys;
  // A stage holds stage_ld elements of the states' type a row (half its floats for bf16).
  const auto stage = [&](int b) { return reinterpret_cast<TState*>(stages + b * d.stage_floats()); };
  const auto* start_states = static_cast<const TState*>(a.start_states);
  run_stages<kBuffers>(
      read_count, per_slot,
      [&](Stage k, int b) {
        const int s = read_slots[k.outer], key = k.inner * kStageKeys;
        copy_state_columns_async<kThreads>(
            stage(b), stage_ld, start_states + ((chunk * S + s) * K + key) * static_cast<size_t>(V), V,
            first_column, kColumns, kStageKeys);
      },
      [&](Stage k, int b) {
        if (!active) return;
        const int s = read_slots[k.outer], key = k.inner * kStageKeys;
        if constexpr (std::is_same_v<TState, float>) {
          multiply_accumulate<Stored::by_row, false, Stored::by_column, false>(
              slot_reads, {q + row * q_ld + key, q_ld}, {stage(b) + column, stage_ld}, kStageKeys);
        } else {
          multiply_accumulate_bf16<Stored::by_row, false, Stored::by_column, false>(
              slot_reads, {q + row * q_ld_of_state + key, q_ld_of_state}, {stage(b) + column, stage_ld},
              kStageKeys);
        }
        if (key + kStageKeys < K) return;
        // The slot ends: its reads join the output, each row scaled by that query's weight for the slot.
        const float* slot_weights = weights + s * C + row;
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float w = slot_weights[16 * m + 8 * h + g];
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                reads.c[m][n][2 * h + e] += w * slot_reads.c[m][n][2 * h + e];
                slot_reads.c[m][n][2 * h + e] = 0.f;
              }
          }
      });
  if (!active) return;
  float* out = a.inter + chunk * C * static_cast<size_t>(V) + first_column + column;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const float* c = reads.c[m][n];
        *reinterpret_cast<float2*>(out + static_cast<size_t>(row + 16 * m + 8 * h + g) * V + 8 * n + 2 * t) =
            make_float2(c[2 * h], c[2 * h + 1]);
      }
}

ReadDims dims_of(const SlotPassDims& dims) {
  return {static_cast<int>(dims.chunks), static_cast<int>(dims.chunk_size), static_cast<int>(dims.key_dim),
          static_cast<int>(dims.value_dim), static_cast<int>(dims.slots)};
}

size_t shared_bytes(const ReadDims& d) {
  return sizeof(float) * static_cast<size_t>(d.shared_floats());
}

template <int kThreads, class TState>
const char* launch(const SlotReadArgs& args, const SlotPassDims& dims, void* stream) {
  const ReadDims d = dims_of(dims);
  const size_t bytes = shared_bytes(d);
  const auto kernel = slot_reads_kernel<kThreads, TState>;
  const cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) return cudaGetErrorString(error);
  const dim3 grid(static_cast<unsigned>(dims.chunks), static_cast<unsigned>(dims.batch_heads),
                  static_cast<unsigned>((dims.value_dim + kColumns - 1) / kColumns));
  kernel<<<grid, kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(args, d);
  return dla::ops::kernels::launched();
}

}  // namespace

bool supports_slot_reads(const SlotPassDims& dims) {
  const int64_t C = dims.chunk_size;
  if ((C != 32 && C != 64) || dims.key_dim < kStageKeys || dims.key_dim % kStageKeys != 0 ||
      dims.key_dim > 4096 || dims.value_dim < kBlock || dims.value_dim % kBlock != 0 ||
      dims.value_dim > (int64_t{1} << 20) || dims.slots < 1 || dims.slots > kMaxSlots ||
      dims.batch_heads < 1 || dims.batch_heads > 65535 || dims.chunks < 1 || dims.chunks > (int64_t{1} << 30))
    return false;
  return shared_bytes(dims_of(dims)) <=
         static_cast<size_t>(std::max(dla::ops::kernels::max_shared_bytes(), 0));
}

const char* slot_reads(const SlotReadArgs& args, const SlotPassDims& dims, void* stream) {
  // A warp per 32 × 32 output block: C / 32 rows of kColumnBlocks.
  if (args.compact_states) {
    return dims.chunk_size == 32 ? launch<32 * kColumnBlocks, __nv_bfloat16>(args, dims, stream)
                                 : launch<64 * kColumnBlocks, __nv_bfloat16>(args, dims, stream);
  }
  return dims.chunk_size == 32 ? launch<32 * kColumnBlocks, float>(args, dims, stream)
                               : launch<64 * kColumnBlocks, float>(args, dims, stream);
}

}  // namespace dla::memory::kernels
