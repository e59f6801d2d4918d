// CUDA kernels of the slot pass's input gradients (slot_gradients_kernels.h). With X_s a chunk's start
// states, G_r the gradients of its end states, dΔ_r those of its writes, L_r = m_r ⊙ v what lands in slot r,
// and the moves undone, Ḡ_s = Σ_r M[r, s] G_r and dΔ̄_s = Σ_r M[r, s] dΔ_r (docs/memory/policies.md):
//   reads    P_s = d_inter X_sᵀ,  dw[c, s] = ⟨P_s[c], q̃[c]⟩,  dq̃ = Σ_s w_s ⊙ P_s,  dW = −Σ_s dΔ̄_s X_sᵀ
//   carry    Σ_r X̄_r G_rᵀ = Σ_s X_s Ḡ_sᵀ,  de = Σ_s ⟨X_s, Ḡ_s⟩
//   writes   Σ_r L_r G_rᵀ,  dT = Σ_r dΔ_r L_rᵀ,  dv = Σ_r m_r ⊙ (Tᵀ dΔ_r)
// One kernel per line, one block of 16 warps per chunk, each warp with fixed output tiles whose accumulators
// stay in registers across the slots (WMMA, TF32 in, float32 out). The slot states stream through shared
// memory 32 value columns at a time, the next stages' asynchronous copies in flight while one computes. Slots
// nothing moves from, or no token lands in, are skipped.
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "../ops/async_copy.cuh"
#include "../ops/cuda_launch.cuh"
#include "../ops/tf32_fragments.cuh"
#include "slot_gradients_kernels.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's slot-gradient kernels use TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using namespace nvcuda;
using dla::ops::kernels::commit_copies;
using dla::ops::kernels::copy_columns_async;
using dla::ops::kernels::copy_rows_async;
using dla::ops::kernels::mma_tf32;
using dla::ops::kernels::round_to_tf32;
using dla::ops::kernels::tf32_bits;
using dla::ops::kernels::wait_copies;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // WMMA tile edge
constexpr int kStep = 8;   // WMMA depth of one TF32 product
constexpr int kMaxSlots = 16;
constexpr int kTilesPerWarp = 5;  // output tiles a warp accumulates: 80 per block, within 128 registers
constexpr int kMaxTiles = kWarps * kTilesPerWarp;
constexpr int kPad = 4;  // shared rows are padded by 4 floats: float4 alignment, fewer bank conflicts
constexpr int kStageColumns = 32;  // value columns of the slot states a pipeline stage brings in
constexpr int kStageLd = kStageColumns + kPad;
constexpr int kStaticSharedBytes = 512;  // the kernels' own small shared arrays
// Stage buffers of each kernel: all but one have their copies in flight while one computes (the read
// kernel's other buffers leave room for three).
constexpr int kReadBuffers = 3;
constexpr int kCarryBuffers = 4;
constexpr int kWriteBuffers = 4;

using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, kStep, float>;

struct Dims {
  int chunks, C, K, V, S;
  bool delta_rule;

  __host__ __device__ int v_ld() const { return V + kPad; }
  __host__ __device__ int k_ld() const { return K + kPad; }
  __host__ __device__ int c_ld() const { return C + kPad; }
  __host__ __device__ int stages_per_slot() const { return V / kStageColumns; }
  __host__ __device__ int chunk_key_tiles() const { return (C / kTile) * (K / kTile); }
  __host__ __device__ int square_tiles() const { return delta_rule ? (C / kTile) * (C / kTile) : 0; }
  __host__ __device__ int value_tiles() const { return (C / kTile) * (V / kTile); }
  __host__ __device__ int write_kernel_tiles() const {
    return chunk_key_tiles() + square_tiles() + value_tiles();
  }
  /// One stage buffer: a slot's [K, 32] state columns and a [C, 32] block of per-token rows.
  __host__ __device__ int stage_floats() const { return (K + C) * kStageLd; }
  /// Shared floats of each kernel, in the order of its buffers below.
  __host__ __device__ int read_kernel_floats() const {
    return C * v_ld() + kReadBuffers * stage_floats() + 3 * C * k_ld() + C * S + S * S;
  }
  __host__ __device__ int carry_kernel_floats() const { return kCarryBuffers * 2 * K * kStageLd + S * S; }
  __host__ __device__ int write_kernel_floats() const {
    return C * v_ld() + kWriteBuffers * stage_floats() + C * kStageLd + 2 * C * c_ld() + S * C;
  }
};

__device__ void clear(Accumulator (&tiles)[kTilesPerWarp]) {
#pragma unroll
  for (int i = 0; i < kTilesPerWarp; ++i)
    wmma::fill_fragment(tiles[i], 0.f);
}

/// A warp's 32 × 32 block of a product in registers, as 2 × 4 m16n8 accumulators of `mma.sync`: lane
/// (g, t) = (lane / 4, lane % 4) holds rows g and g + 8 of each 16-row tile at columns 2t and 2t + 1 of each
/// 8-column tile. Built from raw fragments, each loaded once per step for all eight products (WMMA loads and
/// rounds them per tile, which made the kernels issue-bound).
struct WarpBlock {
  float c[2][4][4];
};

__device__ void clear(WarpBlock& block) {
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        block.c[m][n][e] = 0.f;
}

/// block += A Bᵀ over `depth` (a multiple of 8): A's 32 rows at a (a_ld apart) and B's 32 rows at b (b_ld
/// apart), both with the depth along the row.
__device__ void multiply_accumulate_transposed(WarpBlock& block, const float* a, int a_ld, const float* b,
                                               int b_ld, int depth) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < depth; j += kStep) {
    unsigned a_fragment[2][4], b_fragment[4][2];
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      const float* row = a + (16 * m + g) * a_ld + j + t;
      a_fragment[m][0] = tf32_bits(row[0]);
      a_fragment[m][1] = tf32_bits(row[8 * a_ld]);
      a_fragment[m][2] = tf32_bits(row[4]);
      a_fragment[m][3] = tf32_bits(row[8 * a_ld + 4]);
    }
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const float* row = b + (8 * n + g) * b_ld + j + t;
      b_fragment[n][0] = tf32_bits(row[0]);
      b_fragment[n][1] = tf32_bits(row[4]);
    }
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n)
        mma_tf32(block.c[m][n], a_fragment[m], b_fragment[n]);
  }
}

/// dst (rows ld apart) = scale · block.
__device__ void store(const WarpBlock& block, float* dst, int ld, float scale) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const float* c = block.c[m][n];
      float* top = dst + (16 * m + g) * ld + 8 * n + 2 * t;
      *reinterpret_cast<float2*>(top) = make_float2(scale * c[0], scale * c[1]);
      *reinterpret_cast<float2*>(top + 8 * ld) = make_float2(scale * c[2], scale * c[3]);
    }
}

/// The top-left corner of a warp's 32 × 32 block `b` of a matrix `columns` wide.
__device__ int2 block_corner(int b, int columns) {
  return make_int2((b / (columns / 32)) * 32, (b % (columns / 32)) * 32);
}

/// acc += A B over `depth` (a multiple of 8). Row-major A(i, j) = a[i·a_ld + j], column-major a[i + j·a_ld];
/// likewise B(j, i). Both fragments are rounded to TF32 as they load.
template <class ALayout, class BLayout>
__device__ void multiply_accumulate(Accumulator& acc, const float* a, int a_ld, const float* b, int b_ld,
                                    int depth) {
  constexpr bool kARowMajor = std::is_same_v<ALayout, wmma::row_major>;
  constexpr bool kBRowMajor = std::is_same_v<BLayout, wmma::row_major>;
  for (int j = 0; j < depth; j += kStep) {
    wmma::fragment<wmma::matrix_a, kTile, kTile, kStep, wmma::precision::tf32, ALayout> a_fragment;
    wmma::fragment<wmma::matrix_b, kTile, kTile, kStep, wmma::precision::tf32, BLayout> b_fragment;
    wmma::load_matrix_sync(a_fragment, kARowMajor ? a + j : a + j * a_ld, a_ld);
    wmma::load_matrix_sync(b_fragment, kBRowMajor ? b + j * b_ld : b + j, b_ld);
    round_to_tf32(a_fragment);
    round_to_tf32(b_fragment);
    wmma::mma_sync(acc, a_fragment, b_fragment, acc);
  }
}

// ---- copies into shared memory ----

__device__ void load_floats(float* dst, const float* __restrict__ src, int n) {
  for (int i = threadIdx.x; i < n; i += kThreads)
    dst[i] = __ldg(src + i);
}

/// Runs `stages` stages in a ring of kBuffers shared buffers: the copies of the next kBuffers − 1 stages
/// (prefetch(k, buffer)) are in flight while stage k computes (compute(k, buffer)). Every iteration commits
/// one group of copies, empty past the last stage, so that waiting for all but the newest kBuffers − 1
/// groups waits for stage k's (and, at k = 0, for what the kernel copied before).
template <int kBuffers, class Prefetch, class Compute>
__device__ void run_stages(int stages, Prefetch prefetch, Compute compute) {
  for (int k = 0; k < kBuffers - 1; ++k) {
    if (k < stages) prefetch(k, k);
    commit_copies();
  }
  for (int k = 0; k < stages; ++k) {
    const int ahead = k + kBuffers - 1;
    if (ahead < stages) prefetch(ahead, ahead % kBuffers);
    commit_copies();
    wait_copies<kBuffers - 1>();
    __syncthreads();
    compute(k, k % kBuffers);
    __syncthreads();  // the buffer is free for stage k + kBuffers
  }
  wait_copies<0>();
}

// ---- per-block helpers ----

__device__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ int warp_index() {
  return static_cast<int>(threadIdx.x / 32);
}

/// The top-left corner of tile `t` of a matrix `columns` wide.
__device__ int2 tile_corner(int t, int columns) {
  return make_int2((t / (columns / kTile)) * kTile, (t % (columns / kTile)) * kTile);
}

__device__ size_t block_chunk(const Dims& d) {
  return static_cast<size_t>(blockIdx.y) * d.chunks + blockIdx.x;
}

/// The slots a kernel visits, in order, with each one's partner: where `moves` is given, the slot a source
/// slot's state moves to (−1: none; the moves' columns hold at most one 1), else −1. With `moved_only`, slots
/// whose state moves nowhere are left out; with `tokens`, only slots some token lands in are listed. Every
/// thread of the block calls it, after `moves` and `tokens` are in shared memory.
struct SlotList {
  int count;
  int slot[kMaxSlots];
  int partner[kMaxSlots];
};

__device__ void list_slots(SlotList& list, const float* moves, const float* tokens, int S, int C,
                           bool moved_only) {
  __shared__ int partner_of[kMaxSlots], listed[kMaxSlots];
  // A warp per slot (S ≤ 16 warps): its lanes look at the slots it could move to and at the tokens.
  const int warp = warp_index(), lane = threadIdx.x % 32;
  if (warp < S) {
    const unsigned movers = __ballot_sync(~0u, moves != nullptr && lane < S && moves[lane * S + warp] != 0.f);
    bool token_lands = false;
    for (int c = lane; tokens != nullptr && c < C; c += 32)
      token_lands |= tokens[warp * C + c] != 0.f;
    token_lands = __any_sync(~0u, token_lands);
    if (lane == 0) {
      const int partner = movers == 0 ? -1 : 31 - __clz(movers);
      partner_of[warp] = partner;
      listed[warp] = tokens != nullptr ? token_lands : !moved_only || partner >= 0;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    list.count = 0;
    for (int s = 0; s < S; ++s) {
      if (!listed[s]) continue;
      list.slot[list.count] = s;
      list.partner[list.count] = partner_of[s];
      ++list.count;
    }
  }
  __syncthreads();
}

/// dw, dq̃ and (delta rule) dW of one chunk. Stages: every slot s, 32 value columns at a time, with X_s and
/// dΔ of the slot s moves to.
__global__ void __launch_bounds__(kThreads, 1) read_gradients_kernel(SlotGradientArgs a, Dims d) {
  extern __shared__ __align__(128) float shared[];
  __shared__ SlotList list;
  const int C = d.C, K = d.K, V = d.V, S = d.S, v_ld = d.v_ld(), k_ld = d.k_ld();
  float* d_inter = shared;                    // [C, v_ld]
  float* stage_buffers = d_inter + C * v_ld;  // kReadBuffers × (X_s [K, 36], dΔ [C, 36])
  float* reads = stage_buffers + kReadBuffers * d.stage_floats();  // P_s [C, k_ld]
  float* d_q = reads + C * k_ld;                                   // [C, k_ld]
  float* q = d_q + C * k_ld;                                       // q̃ [C, k_ld]
  float* weights = q + C * k_ld;                                   // [C, S]
  float* moves = weights + C * S;                                  // [S, S]

  const size_t chunk = block_chunk(d);
  const size_t CK = static_cast<size_t>(C) * K, CV = static_cast<size_t>(C) * V,
               KV = static_cast<size_t>(K) * V;
  const int warp = warp_index(), lane = threadIdx.x % 32;
  copy_rows_async<kThreads>(d_inter, v_ld, a.d_inter + chunk * CV, C, V);
  copy_rows_async<kThreads>(q, k_ld, a.transported_q + chunk * CK, C, K);
  load_floats(weights, a.read_weight + chunk * C * S, C * S);
  load_floats(moves, a.state_move + chunk * S * S, S * S);
  for (int i = threadIdx.x; i < C * k_ld; i += kThreads)
    d_q[i] = 0.f;
  __syncthreads();
  list_slots(list, moves, nullptr, S, C, /*moved_only=*/false);

  // The first warps take P_s's 32 × 32 blocks, the next ones dW's.
  const int read_blocks = (C / 32) * (K / 32), per_slot = d.stages_per_slot();
  const bool reads_block = warp < read_blocks,
             d_w_block = d.delta_rule && !reads_block && warp < 2 * read_blocks;
  const int2 corner = block_corner(reads_block ? warp : warp - read_blocks, K);
  WarpBlock block;
  clear(block);

  const auto buffer_x = [&](int b) { return stage_buffers + b * d.stage_floats(); };
  const auto buffer_rows = [&](int b) { return buffer_x(b) + K * kStageLd; };
  run_stages<kReadBuffers>(
      S * per_slot,
      [&](int k, int b) {
        const int s = k / per_slot, column = (k % per_slot) * kStageColumns, partner = list.partner[s];
        copy_columns_async<kThreads>(buffer_x(b), kStageLd, a.start_states + (chunk * S + s) * KV, V, column,
                           kStageColumns, K);
        if (d.delta_rule && partner >= 0) {
          copy_columns_async<kThreads>(buffer_rows(b), kStageLd, a.d_written + (chunk * S + partner) * CV, V, column,
                             kStageColumns, C);
        }
      },
      [&](int k, int b) {
        const int s = k / per_slot, stage = k % per_slot, column = stage * kStageColumns;
        const float* x_rows = buffer_x(b) + corner.y * kStageLd;
        if (reads_block) {
          if (stage == 0) clear(block);
          multiply_accumulate_transposed(block, d_inter + corner.x * v_ld + column, v_ld, x_rows, kStageLd,
                                         kStageColumns);
          if (stage == per_slot - 1) store(block, reads + corner.x * k_ld + corner.y, k_ld, 1.f);
        } else if (d_w_block && list.partner[s] >= 0) {
          multiply_accumulate_transposed(block, buffer_rows(b) + corner.x * kStageLd, kStageLd, x_rows,
                                         kStageLd, kStageColumns);
        }
        if (stage != per_slot - 1) return;
        __syncthreads();  // P_s is complete
        for (int e = threadIdx.x; e < C * K; e += kThreads) {
          const int c = e / K, kk = e % K;
          d_q[c * k_ld + kk] += weights[c * S + s] * reads[c * k_ld + kk];
        }
        for (int c = warp; c < C; c += kWarps) {
          float sum = 0.f;
          for (int kk = lane; kk < K; kk += 32)
            sum += reads[c * k_ld + kk] * q[c * k_ld + kk];
          sum = warp_sum(sum);
          if (lane == 0) a.d_read_weight[(chunk * C + c) * S + s] = sum;
        }
      });
  for (int e = threadIdx.x; e < C * K; e += kThreads)
    a.d_transported_q[chunk * CK + e] = d_q[(e / K) * k_ld + e % K];
  if (d_w_block) store(block, a.d_w + chunk * CK + corner.x * K + corner.y, K, -1.f);  // dW = −Σ_s dΔ̄_s X_sᵀ
}

/// de and (delta rule) Σ_s X_s Ḡ_sᵀ of one chunk. Stages: the slots whose state moves, 32 value columns at
/// a time, with X_s and G of the slot it moves to.
__global__ void __launch_bounds__(kThreads, 1) carry_gradients_kernel(SlotGradientArgs a, Dims d) {
  extern __shared__ __align__(128) float shared[];
  __shared__ SlotList list;
  __shared__ float warp_sums[kWarps];
  const int K = d.K, V = d.V, S = d.S;
  float* stage_buffers = shared;  // kCarryBuffers × (X_s [K, 36], Ḡ_s [K, 36])
  float* moves = stage_buffers + kCarryBuffers * 2 * K * kStageLd;  // [S, S]

  const size_t chunk = block_chunk(d);
  const size_t KV = static_cast<size_t>(K) * V;
  const int warp = warp_index(), per_slot = d.stages_per_slot();
  load_floats(moves, a.state_move + chunk * S * S, S * S);
  __syncthreads();
  list_slots(list, moves, nullptr, S, d.C, /*moved_only=*/true);
  const bool gram_block = d.delta_rule && warp < (K / 32) * (K / 32);
  const int2 corner = block_corner(warp, K);
  WarpBlock gram;
  clear(gram);
  float decay_grad = 0.f;

  const auto buffer_x = [&](int b) { return stage_buffers + b * 2 * K * kStageLd; };
  const auto buffer_g = [&](int b) { return buffer_x(b) + K * kStageLd; };
  run_stages<kCarryBuffers>(
      list.count * per_slot,
      [&](int k, int b) {
        const int i = k / per_slot, column = (k % per_slot) * kStageColumns;
        copy_columns_async<kThreads>(buffer_x(b), kStageLd, a.start_states + (chunk * S + list.slot[i]) * KV, V, column,
                           kStageColumns, K);
        copy_columns_async<kThreads>(buffer_g(b), kStageLd, a.d_end_states + (chunk * S + list.partner[i]) * KV, V,
                           column, kStageColumns, K);
      },
      [&](int, int b) {
        for (int e = threadIdx.x; e < K * kStageColumns; e += kThreads) {
          const int offset = (e / kStageColumns) * kStageLd + e % kStageColumns;
          decay_grad += buffer_x(b)[offset] * buffer_g(b)[offset];
        }
        if (gram_block) {
          multiply_accumulate_transposed(gram, buffer_x(b) + corner.x * kStageLd, kStageLd,
                                         buffer_g(b) + corner.y * kStageLd, kStageLd, kStageColumns);
        }
      });
  if (gram_block) store(gram, a.moved_state_gram + chunk * K * K + corner.x * K + corner.y, K, 1.f);
  decay_grad = warp_sum(decay_grad);
  if (threadIdx.x % 32 == 0) warp_sums[warp] = decay_grad;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.f;
    for (int w = 0; w < kWarps; ++w)
      sum += warp_sums[w];
    a.d_chunk_decay[chunk] = sum;
  }
}

/// Σ_r L_r G_rᵀ, dv and (delta rule) dT of one chunk; without the delta rule T is the identity. Stages: the
/// slots some token lands in, 32 value columns at a time, with G_r and dΔ_r.
__global__ void __launch_bounds__(kThreads, 1) write_gradients_kernel(SlotGradientArgs a, Dims d) {
  extern __shared__ __align__(128) float shared[];
  __shared__ SlotList list;
  const int C = d.C, K = d.K, V = d.V, S = d.S, v_ld = d.v_ld(), c_ld = d.c_ld();
  float* values = shared;                    // v [C, v_ld]
  float* stage_buffers = values + C * v_ld;  // kWriteBuffers × (G_r [K, 36], dΔ_r [C, 36])
  float* landed = stage_buffers + kWriteBuffers * d.stage_floats();  // the stage's columns of L_r [C, 36]
  float* t_inverse = landed + C * kStageLd;                          // T [C, c_ld]
  float* t_landed = t_inverse + C * c_ld;  // T with column c scaled by m_r[c] [C, c_ld]
  float* tokens = t_landed + C * c_ld;     // m [S, C]

  const size_t chunk = block_chunk(d);
  const size_t CK = static_cast<size_t>(C) * K, CV = static_cast<size_t>(C) * V,
               KV = static_cast<size_t>(K) * V, CC = static_cast<size_t>(C) * C;
  const int warp = warp_index(), per_slot = d.stages_per_slot();
  copy_rows_async<kThreads>(values, v_ld, a.source_v + chunk * CV, C, V);
  if (d.delta_rule) {
    copy_rows_async<kThreads>(t_inverse, c_ld, a.t_inverse + chunk * CC, C, C);
  } else {
    for (int e = threadIdx.x; e < C * C; e += kThreads)
      t_inverse[(e / C) * c_ld + e % C] = e / C == e % C ? 1.f : 0.f;
  }
  load_floats(tokens, a.token_move + chunk * S * C, S * C);
  __syncthreads();
  list_slots(list, nullptr, tokens, S, C, /*moved_only=*/false);

  const int landed_tiles = d.chunk_key_tiles(), square_end = landed_tiles + d.square_tiles();
  const int total = d.write_kernel_tiles();
  Accumulator acc[kTilesPerWarp];
  clear(acc);

  const auto buffer_g = [&](int b) { return stage_buffers + b * d.stage_floats(); };
  const auto buffer_rows = [&](int b) { return buffer_g(b) + K * kStageLd; };
  run_stages<kWriteBuffers>(
      list.count * per_slot,
      [&](int k, int b) {
        const int r = list.slot[k / per_slot], column = (k % per_slot) * kStageColumns;
        copy_columns_async<kThreads>(buffer_g(b), kStageLd, a.d_end_states + (chunk * S + r) * KV, V, column,
                           kStageColumns, K);
        copy_columns_async<kThreads>(buffer_rows(b), kStageLd, a.d_written + (chunk * S + r) * CV, V, column,
                           kStageColumns, C);
      },
      [&](int k, int b) {
        const int r = list.slot[k / per_slot], stage = k % per_slot, column = stage * kStageColumns;
        const float* m = tokens + r * C;
        for (int e = threadIdx.x; e < C * kStageColumns; e += kThreads) {
          const int c = e / kStageColumns, j = e % kStageColumns;
          landed[c * kStageLd + j] = m[c] * values[c * v_ld + column + j];
        }
        if (stage == 0) {
          for (int e = threadIdx.x; e < C * C; e += kThreads) {
            const int offset = (e / C) * c_ld + e % C;
            t_landed[offset] = t_inverse[offset] * m[e % C];
          }
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kTilesPerWarp; ++i) {
          const int t = warp + kWarps * i;
          if (t < landed_tiles) {
            const int2 at = tile_corner(t, K);
            multiply_accumulate<wmma::row_major, wmma::col_major>(acc[i], landed + at.x * kStageLd, kStageLd,
                                                                  buffer_g(b) + at.y * kStageLd, kStageLd,
                                                                  kStageColumns);
          } else if (t < square_end) {
            const int2 at = tile_corner(t - landed_tiles, C);
            multiply_accumulate<wmma::row_major, wmma::col_major>(acc[i], buffer_rows(b) + at.x * kStageLd,
                                                                  kStageLd, landed + at.y * kStageLd,
                                                                  kStageLd, kStageColumns);
          } else if (t < total) {
            const int2 at = tile_corner(t - square_end, V);
            if (at.y < column || at.y >= column + kStageColumns) continue;
            multiply_accumulate<wmma::col_major, wmma::row_major>(
                acc[i], t_landed + at.x, c_ld, buffer_rows(b) + (at.y - column), kStageLd, C);
          }
        }
      });
#pragma unroll
  for (int i = 0; i < kTilesPerWarp; ++i) {
    const int t = warp + kWarps * i;
    if (t < landed_tiles) {
      const int2 at = tile_corner(t, K);
      wmma::store_matrix_sync(a.landed_gradient + chunk * CK + at.x * K + at.y, acc[i], K,
                              wmma::mem_row_major);
    } else if (t < square_end) {
      const int2 at = tile_corner(t - landed_tiles, C);
      wmma::store_matrix_sync(a.d_t_inverse + chunk * CC + at.x * C + at.y, acc[i], C, wmma::mem_row_major);
    } else if (t < total) {
      const int2 at = tile_corner(t - square_end, V);
      wmma::store_matrix_sync(a.d_source_v + chunk * CV + at.x * V + at.y, acc[i], V, wmma::mem_row_major);
    }
  }
}

Dims dims_of(const SlotPassDims& dims, bool delta_rule) {
  return {static_cast<int>(dims.chunks),    static_cast<int>(dims.chunk_size), static_cast<int>(dims.key_dim),
          static_cast<int>(dims.value_dim), static_cast<int>(dims.slots),      delta_rule};
}

int usable_shared_bytes() {
  return dla::ops::kernels::max_shared_bytes() - kStaticSharedBytes;
}

template <class Kernel>
const char* launch(Kernel kernel, const SlotGradientArgs& args, const Dims& d, int64_t batch_heads,
                   int floats, void* stream) {
  const int bytes = floats * static_cast<int>(sizeof(float));
  cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (error != cudaSuccess) return cudaGetErrorString(error);
  kernel<<<dim3(static_cast<unsigned>(d.chunks), static_cast<unsigned>(batch_heads)), kThreads, bytes,
           static_cast<cudaStream_t>(stream)>>>(args, d);
  return dla::ops::kernels::launched();
}

}  // namespace

bool supports_slot_gradients(const SlotPassDims& dims) {
  const auto tiled = [](int64_t x) { return x >= kTile && x % kTile == 0 && x <= 4096; };
  if (!tiled(dims.chunk_size) || !tiled(dims.key_dim) || dims.value_dim % kStageColumns != 0 ||
      dims.value_dim < kStageColumns || dims.value_dim > 4096 || dims.slots < 1 || dims.slots > kMaxSlots ||
      dims.batch_heads < 1 || dims.batch_heads > 65535 || dims.chunks < 1 || dims.chunks > (int64_t{1} << 30))
    return false;
  // The read and carry kernels' warps take 32 × 32 blocks: P_s and dW, and Σ X_s Ḡ_sᵀ, one each.
  const int64_t c_blocks = dims.chunk_size / 32, k_blocks = dims.key_dim / 32;
  if (dims.chunk_size % 32 != 0 || dims.key_dim % 32 != 0 || 2 * c_blocks * k_blocks > kWarps ||
      k_blocks * k_blocks > kWarps)
    return false;
  const Dims d = dims_of(dims, /*delta_rule=*/true);  // the delta rule's buffers and tiles are the larger
  const int limit = usable_shared_bytes() / static_cast<int>(sizeof(float));
  return d.write_kernel_tiles() <= kMaxTiles && d.read_kernel_floats() <= limit &&
         d.carry_kernel_floats() <= limit && d.write_kernel_floats() <= limit;
}

const char* slot_pass_gradients(const SlotGradientArgs& args, const SlotPassDims& dims, void* stream) {
  const Dims d = dims_of(dims, args.t_inverse != nullptr);
  const int64_t bh = dims.batch_heads;
  const char* error = launch(read_gradients_kernel, args, d, bh, d.read_kernel_floats(), stream);
  if (error == nullptr) error = launch(carry_gradients_kernel, args, d, bh, d.carry_kernel_floats(), stream);
  if (error == nullptr) error = launch(write_gradients_kernel, args, d, bh, d.write_kernel_floats(), stream);
  return error;
}

}  // namespace dla::memory::kernels
