// CUDA kernels of the multi-state slot pass (dla/memory/slot_pass.h): one thread block per (batch·head, 16
// value columns) carries the [K, 16] slices of all S slot states through every chunk in shared memory. With
// X̄_r = Σ_s M[r, s] X_s the states moved to their slots, each chunk is (docs/memory/policies.md)
//   forward   Δ_r = Z_r − W X̄_r,   X'_r = e X̄_r + K̃ᵀ Δ_r,   Z_r = T (m_r ⊙ v)
//   backward  dΔ_r = K̃ G_r,   dX̄_r = e G_r − Wᵀ dΔ_r,   dX_s = Σ_r M[r, s] dX̄_r + q̃ᵀ (w_s ⊙ d_inter)
// (no W and T for SSD). The forward writes every chunk's start states; the reads from them run outside
// (slot_reads.cu). The products are 16 × 16 tiles on tensor cores (mma.sync on raw fragments, TF32 in,
// float32 out); the left operand is the same for every slot, so each warp takes one row tile for a batch of
// slots and loads each of its fragments once for all of them. Moving states between slots goes a few
// adjacent entries at a time, in registers. A chunk's operands arrive by asynchronous copies, as many in
// flight at once as the buffers allow. The left operands are rounded to TF32 once, in shared memory, by the
// threads that copied them, and the forward's Δ as it is stored (on sm_90 a rounding is two instructions);
// the fragments round the states and scale v by a slot's token mask (forward) or d_inter by a slot's read
// weights (backward) as they load, so that all slots' products run as one parallel pass.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "../ops/async_copy.cuh"
#include "../ops/cuda_launch.cuh"
#include "../ops/tf32_fragments.cuh"
#include "slot_pass_kernels.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's slot-pass kernels use TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using dla::ops::kernels::commit_copies;
using dla::ops::kernels::copy_columns_async;
using dla::ops::kernels::copy_floats_async;
using dla::ops::kernels::copy_rows_async;
using dla::ops::kernels::mma_tf32;
using dla::ops::kernels::round_copied_to_tf32;
using dla::ops::kernels::tf32_bits;
using dla::ops::kernels::wait_copies;

constexpr int kThreads = 512;  // 16 warps: within 128 registers, without spills
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // product tile edge, and the value columns per block
constexpr int kStep = 8;   // depth of one TF32 mma
constexpr int kMaxSlots = 16;
static_assert(kMaxSlots <= kWarps, "the forward sets each slot's flags with a warp of its own");
constexpr int kPad = 4;  // shared rows are padded by 4 floats: float4 alignment, fewer bank conflicts
// The [*, 16] slot buffers' rows are padded by 8 floats where shared memory allows (24-float rows put the
// lanes of a B fragment load on distinct banks), else by 4.
constexpr int kWidePad = 8;

/// Shared-memory layout in floats. Every buffer the tensor cores read starts 32-byte aligned: C and K are
/// multiples of 16 and the padded row lengths multiples of 4. Each direction holds only its own buffers:
/// the forward T⁻¹ and the chunk's value columns, the backward d_inter and the read weights.
struct Layout {
  int chunks, chunk_size, key_dim, value_dim, slots;
  int group;     ///< slots whose [C, 16] buffers are held at once
  bool forward;  ///< the forward kernel's buffers, else the backward's
  int pad;       ///< kWidePad or kPad

  __host__ __device__ int tile_ld() const { return kTile + pad; }
  /// A [C, K] operand read along its rows (W forward, K̃ backward).
  __host__ __device__ int operand_ld() const { return key_dim + kPad; }
  /// A [C, K] operand read down its columns (K̃ forward, W and q̃ backward): rows 8 floats longer than a
  /// multiple of 16 keep the lanes of a fragment load on distinct banks.
  __host__ __device__ int column_operand_ld() const { return key_dim + 2 * kPad; }
  __host__ __device__ int square_ld() const { return chunk_size + kPad; }
  __host__ __device__ int slot_floats() const { return key_dim * tile_ld(); }
  __host__ __device__ int rows_floats() const { return chunk_size * tile_ld(); }

  __host__ __device__ int states() const { return 0; }
  __host__ __device__ int group_buffers() const { return states() + slots * slot_floats(); }
  __host__ __device__ int operand() const { return group_buffers() + group * rows_floats(); }
  __host__ __device__ int square() const { return operand() + chunk_size * column_operand_ld(); }  // T⁻¹
  // The forward's value columns, then the backward's d_inter and read weights.
  __host__ __device__ int value_columns() const {
    return square() + (forward ? chunk_size * square_ld() : 0);
  }
  __host__ __device__ int inter() const { return value_columns() + (forward ? rows_floats() : 0); }
  __host__ __device__ int weights() const { return inter() + (forward ? 0 : rows_floats()); }
  __host__ __device__ int moves() const { return weights() + (forward ? 0 : chunk_size * slots); }
  __host__ __device__ int tokens() const { return moves() + slots * slots; }  // forward
  __host__ __device__ int total() const { return tokens() + (forward ? slots * chunk_size : 0); }
};

size_t shared_bytes(const Layout& l) {
  return sizeof(float) * static_cast<size_t>(l.total());
}

// ---- products on tensor cores ----

/// A warp's 16 × 16 tile of a product as two m16n8 accumulators of mma.sync: lane (g, t) = (lane / 4,
/// lane % 4) holds rows g and g + 8 at columns 2t, 2t + 1 of each 8-column half.
struct WarpTile {
  float c[2][4];
};

/// tile = scale · the tile at src (rows ld apart).
__device__ void load_tile(WarpTile& tile, const float* src, int ld, float scale) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int n = 0; n < 2; ++n) {
    const float2 top = *reinterpret_cast<const float2*>(src + g * ld + 8 * n + 2 * t);
    const float2 bottom = *reinterpret_cast<const float2*>(src + (g + 8) * ld + 8 * n + 2 * t);
    tile.c[n][0] = scale * top.x;
    tile.c[n][1] = scale * top.y;
    tile.c[n][2] = scale * bottom.x;
    tile.c[n][3] = scale * bottom.y;
  }
}

/// The tile at dst (rows ld apart) = scale · tile, rounded to TF32 when kRound (for a product's operand).
template <bool kRound = false>
__device__ void store_tile(const WarpTile& tile, float* dst, int ld, float scale) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const auto value = [scale](float x) { return kRound ? __uint_as_float(tf32_bits(scale * x)) : scale * x; };
#pragma unroll
  for (int n = 0; n < 2; ++n) {
    const float* c = tile.c[n];
    *reinterpret_cast<float2*>(dst + g * ld + 8 * n + 2 * t) = make_float2(value(c[0]), value(c[1]));
    *reinterpret_cast<float2*>(dst + (g + 8) * ld + 8 * n + 2 * t) = make_float2(value(c[2]), value(c[3]));
  }
}

/// How a product's right operand loads: rounded to TF32, already rounded, or scaled and then rounded.
enum class RightLoad { kRound, kRounded, kScale };

/// A 16-row tile's products with the slots of a batch: tiles[i] += A B_i for the first `count` ≤ kSlots
/// slots, over `depth` (a multiple of 8). A(i, j) = a[i·a_ld + j], or a[j·a_ld + i] when kAColumns, already
/// rounded to TF32; it is the same for every slot, so each fragment loads once for all of them. B_i is
/// [depth, 16] row-major at b + i·b_slot_stride (rows b_ld apart; one B loaded once when the stride is 0),
/// loaded as kLoad says; kScale scales row j by scales[i·scale_slot_stride + j·scale_stride].
struct SlotOperand {
  const float* b;
  int b_ld;
  int b_slot_stride;
  const float* scales = nullptr;
  int scale_slot_stride = 0;
  int scale_stride = 0;
};

template <bool kAColumns, RightLoad kLoad, int kSlots>
__device__ void multiply_accumulate(WarpTile (&tiles)[kSlots], int count, const float* a, int a_ld,
                                    const SlotOperand& x, int depth) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // The lane's operands as pointers that advance one depth step at a time, so that the loads take
  // constant offsets rather than an index product each.
  const int a_row = kAColumns ? 1 : a_ld, a_depth = kAColumns ? a_ld : 1;
  const float* a_top = a + g * a_row + t * a_depth;  // A(g, j + t); A(g + 8, ·) is 8 rows on
  const float* b_low = x.b + t * x.b_ld + g;         // B(j + t, g); B(j + t + 4, ·) is 4 rows on
  const float* scale_low = kLoad == RightLoad::kScale ? x.scales + t * x.scale_stride : nullptr;
  const auto right = [](float value, float scale) {
    if constexpr (kLoad == RightLoad::kRounded) return __float_as_uint(value);
    if constexpr (kLoad == RightLoad::kRound) return tf32_bits(value);
    return tf32_bits(scale * value);
  };
  // A single slot's products unroll two steps, so that one step's loads overlap the other's products; a
  // batch of slots has that already.
#pragma unroll(kSlots == 1 ? 2 : 1)
  for (int j = 0; j < depth; j += kStep) {
    const unsigned a_fragment[4] = {__float_as_uint(a_top[0]), __float_as_uint(a_top[8 * a_row]),
                                    __float_as_uint(a_top[4 * a_depth]),
                                    __float_as_uint(a_top[8 * a_row + 4 * a_depth])};
    float b_values[2][2];
#pragma unroll
    for (int i = 0; i < kSlots; ++i) {
      if (i >= count) break;
      if (i == 0 || x.b_slot_stride != 0) {
        const float* b = b_low + i * x.b_slot_stride;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          b_values[n][0] = b[8 * n];
          b_values[n][1] = b[4 * x.b_ld + 8 * n];
        }
      }
      float low = 1.f, high = 1.f;
      if constexpr (kLoad == RightLoad::kScale) {
        low = scale_low[i * x.scale_slot_stride];
        high = scale_low[i * x.scale_slot_stride + 4 * x.scale_stride];
      }
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const unsigned b_fragment[2] = {right(b_values[n][0], low), right(b_values[n][1], high)};
        mma_tf32(tiles[i].c[n], a_fragment, b_fragment);
      }
    }
    a_top += kStep * a_depth;
    b_low += kStep * x.b_ld;
    if constexpr (kLoad == RightLoad::kScale) scale_low += kStep * x.scale_stride;
  }
}

/// Slots per batch in the products whose output rows are the chunk's (C / 16 row tiles, few) and the keys'
/// (K / 16, more): enough batches for the 16 warps, each A fragment serving every slot of a batch. The
/// forward keeps one slot per tile: it skips slots without tokens or state, which batches would compute.
constexpr int kChunkRowBatch = 2;
constexpr int kKeyRowBatch = 4;
constexpr int kForwardChunkRowBatch = 1;
constexpr int kForwardKeyRowBatch = 1;

/// Calls job(first_slot, count, row) for this warp's share of the pairs (16-row tile, batch of kBatch
/// slots) over `row_tiles` tiles and the slots [first, first + slots).
template <int kBatch, class Job>
__device__ void for_each_slot_batch(int row_tiles, int first, int slots, Job job) {
  const int batches = (slots + kBatch - 1) / kBatch;
  // Item batch · row_tiles + row, advanced kWarps items at a time: the divisions once, not per item.
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int batch_step = kWarps / row_tiles, row_step = kWarps % row_tiles;
  for (int batch = warp / row_tiles, row = warp % row_tiles; batch < batches;) {
    const int batch_first = first + batch * kBatch;
    job(batch_first, min(kBatch, first + slots - batch_first), row * kTile);
    batch += batch_step;
    row += row_step;
    if (row >= row_tiles) {
      row -= row_tiles;
      ++batch;
    }
  }
}

/// tiles[i] = scale · the tile at src + i·slot_stride, for the first `count`.
template <int kSlots>
__device__ void load_tiles(WarpTile (&tiles)[kSlots], int count, const float* src, int slot_stride, int ld,
                           float scale) {
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    if (i < count) load_tile(tiles[i], src + i * slot_stride, ld, scale);
  }
}

/// The tile at dst + i·slot_stride = scale · tiles[i], for the first `count`; rounded to TF32 when kRound.
template <bool kRound = false, int kSlots>
__device__ void store_tiles(const WarpTile (&tiles)[kSlots], int count, float* dst, int slot_stride, int ld,
                            float scale) {
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    if (i < count) store_tile<kRound>(tiles[i], dst + i * slot_stride, ld, scale);
  }
}

// ---- copies between shared and global memory ----

/// 4 floats to global dst as T: one 16-byte store of floats, or one 8-byte store of bf16.
__device__ void store4(float* dst, float4 x) {
  *reinterpret_cast<float4*>(dst) = x;
}
__device__ void store4(__nv_bfloat16* dst, float4 x) {
  const __nv_bfloat162 low = __floats2bfloat162_rn(x.x, x.y), high = __floats2bfloat162_rn(x.z, x.w);
  *reinterpret_cast<uint2*>(dst) =
      make_uint2(*reinterpret_cast<const unsigned*>(&low), *reinterpret_cast<const unsigned*>(&high));
}

/// The 16 columns from first_column of a [rows, value_dim] global matrix of T = src (rows src_ld apart).
template <class T>
__device__ void store_columns(T* dst, int value_dim, int first_column, const float* src, int src_ld,
                              int rows) {
  constexpr int kPerRow = kTile / 4;
  for (int i = threadIdx.x; i < rows * kPerRow; i += kThreads) {
    const int column = first_column + 4 * (i % kPerRow);
    if (column < value_dim) {
      store4(dst + static_cast<size_t>(i / kPerRow) * value_dim + column,
             *reinterpret_cast<const float4*>(src + (i / kPerRow) * src_ld + 4 * (i % kPerRow)));
    }
  }
}

// ---- per-block steps ----

/// Moves the states between slots: out_r = Σ_s M[r, s] x_s, or Σ_s M[s, r] x_s (the backward's transpose).
/// Each thread owns its entries in every slot, so no other thread reads them, and moves kWidth adjacent ones
/// at once, a vector load and store per slot, so that each move entry it loads serves all of them. The slot
/// count is a template argument so that the sources unroll without per-slot guards.
template <int S>
__device__ void move_slots(float* states, const float* moves, const Layout& l, bool transposed) {
  constexpr int kWidth = S <= 8 ? 4 : 2;  // within the registers of 512 threads
  using Vector = std::conditional_t<kWidth == 4, float4, float2>;
  constexpr int kPerRow = kTile / kWidth;
  const int pieces = l.key_dim * kPerRow;
  for (int p = threadIdx.x; p < pieces; p += kThreads) {
    const int offset = (p / kPerRow) * l.tile_ld() + kWidth * (p % kPerRow);
    Vector x[S];
#pragma unroll
    for (int s = 0; s < S; ++s)
      x[s] = *reinterpret_cast<const Vector*>(states + s * l.slot_floats() + offset);
      // Unrolling the destinations too lets the compiler hoist the move entries' loads and spill.
#pragma unroll 1
    for (int r = 0; r < S; ++r) {
      float sum[kWidth] = {};
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const float m = transposed ? moves[s * S + r] : moves[r * S + s];
        const float* entries = reinterpret_cast<const float*>(&x[s]);
#pragma unroll
        for (int e = 0; e < kWidth; ++e)
          sum[e] += m * entries[e];
      }
      *reinterpret_cast<Vector*>(states + r * l.slot_floats() + offset) =
          *reinterpret_cast<const Vector*>(sum);
    }
  }
}

template <int... Counts>
__device__ void move_slots_of(std::integer_sequence<int, Counts...>, float* states, const float* moves,
                              const Layout& l, bool transposed) {
  ((l.slots == Counts + 1 ? move_slots<Counts + 1>(states, moves, l, transposed) : void()), ...);
}

__device__ void move_between_slots(float* states, const float* moves, const Layout& l, bool transposed) {
  move_slots_of(std::make_integer_sequence<int, kMaxSlots>{}, states, moves, l, transposed);
}

/// Stores the states of the slots in `slots` (a bit per slot), as T.
template <class T>
__device__ void store_states(T* dst, const float* states, const Layout& l, int first_column, unsigned slots) {
  const size_t slot_stride = static_cast<size_t>(l.key_dim) * l.value_dim;
  for (int s = 0; s < l.slots; ++s)
    if ((slots >> s) & 1u)
      store_columns(dst + s * slot_stride, l.value_dim, first_column, states + s * l.slot_floats(),
                    l.tile_ld(), l.key_dim);
}

/// What both kernels work out first: the dims, the block's place (its batch·head and first value column), the
/// tile counts and the per-chunk strides of the global buffers.
struct BlockFrame {
  int S, C, K, V, ld, c_tiles, k_tiles, warp, first_column;
  size_t head, CK, CV, SKV;
};

__device__ BlockFrame block_frame(const Layout& l) {
  const int S = l.slots, C = l.chunk_size, K = l.key_dim, V = l.value_dim;
  return {S,
          C,
          K,
          V,
          l.tile_ld(),
          C / kTile,
          K / kTile,
          static_cast<int>(threadIdx.x / 32),
          static_cast<int>(blockIdx.x * kTile),
          blockIdx.y,
          static_cast<size_t>(C) * K,
          static_cast<size_t>(C) * V,
          static_cast<size_t>(S) * K * V};
}

__global__ void __launch_bounds__(kThreads, 1) slot_pass_forward_kernel(SlotPassForwardArgs a, Layout l) {
  extern __shared__ __align__(128) float shared[];
  __shared__ int live[kMaxSlots], next_live[kMaxSlots], has_tokens[kMaxSlots];
  float* states = shared + l.states();
  float* group_buffers = shared + l.group_buffers();  // Δ_r
  float* operand = shared + l.operand();              // W, then K̃
  float* t_inverse = shared + l.square();
  float* values = shared + l.value_columns();  // the chunk's [C, 16] block of v
  float* moves = shared + l.moves();
  float* tokens = shared + l.tokens();

  const auto [S, C, K, V, ld, c_tiles, k_tiles, warp, first_column, head, CK, CV, SKV] = block_frame(l);
  const bool delta_rule = a.w != nullptr;
  const int w_ld = l.operand_ld(), k_ld = l.column_operand_ld(), t_ld = l.square_ld();

  for (int i = threadIdx.x; i < S * l.slot_floats(); i += kThreads)
    states[i] = 0.f;
  if (threadIdx.x < kMaxSlots) live[threadIdx.x] = 0;

  // What the moves and the writes read besides W. A chunk's copies start during the previous chunk's last
  // transitions, which need none of these buffers.
  const auto copy_write_operands = [&](size_t chunk) {
    if (delta_rule) copy_rows_async<kThreads>(t_inverse, t_ld, a.t_inverse + chunk * C * C, C, C);
    copy_columns_async<kThreads>(values, ld, a.source_v + chunk * CV, V, first_column, kTile, C);
    copy_floats_async<kThreads>(moves, a.state_move + chunk * S * S, S * S);
    copy_floats_async<kThreads>(tokens, a.token_move + chunk * S * C, S * C);
  };
  copy_write_operands(head * l.chunks);

  for (int n = 0; n < l.chunks; ++n) {
    const size_t chunk = head * l.chunks + n;
    __syncthreads();  // the states are complete and W's buffer is free
    if (delta_rule) copy_rows_async<kThreads>(operand, w_ld, a.w + chunk * CK, C, K);
    commit_copies();
    unsigned stored = ~0u;  // the slots live at the chunk's start, unless dead ones are written too
    if (!a.write_dead_slots) {
      stored = 0;
      for (int s = 0; s < S; ++s)
        stored |= live[s] != 0 ? 1u << s : 0u;
    }
    if (a.compact_states) {
      store_states(static_cast<__nv_bfloat16*>(a.start_states) + chunk * SKV, states, l, first_column,
                   stored);
    } else {
      store_states(static_cast<float*>(a.start_states) + chunk * SKV, states, l, first_column, stored);
    }
    const float decay = __ldg(a.chunk_decay + chunk);
    wait_copies<0>();
    if (delta_rule) {  // each thread rounds the pieces it copied
      round_copied_to_tf32<kThreads>(t_inverse, t_ld, C, C);
      round_copied_to_tf32<kThreads>(operand, w_ld, K, C);
    }
    __syncthreads();
    if (warp < S) {  // a warp per slot: does a token land in it, does a live state move to it
      const int s = warp, lane = threadIdx.x % 32;
      bool any_token = false;
      for (int c = lane; c < C; c += 32)
        any_token |= tokens[s * C + c] != 0.f;
      any_token = __any_sync(0xffffffffu, any_token);
      const bool next = __any_sync(0xffffffffu, lane < S && moves[s * S + lane] != 0.f && live[lane]);
      if (lane == 0) {
        has_tokens[s] = any_token;
        next_live[s] = next || any_token;
      }
    }
    __syncthreads();
    if (blockIdx.x == 0 && threadIdx.x == 0) {  // the flags are the same for every value column
      unsigned mask = 0;
      for (int s = 0; s < S; ++s)
        mask |= next_live[s] ? 1u << s : 0u;
      a.live_slots[chunk] = mask;
    }

    move_between_slots(states, moves, l, /*transposed=*/false);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < S) live[threadIdx.x] = next_live[threadIdx.x];

    // Writes and transitions, a group of slots at a time: Δ_r = Z_r − W X̄_r with Z_r = T (m_r ⊙ v) (m_r ⊙ v
    // without the delta rule), then X'_r = e X̄_r + K̃ᵀ Δ_r.
    for (int first = 0; first < S; first += l.group) {
      const int count = min(l.group, S - first);
      if (delta_rule && first > 0) {  // the previous group's transitions held K̃ there
        copy_rows_async<kThreads>(operand, w_ld, a.w + chunk * CK, C, K);
        commit_copies();
        wait_copies<0>();
        round_copied_to_tf32<kThreads>(operand, w_ld, K, C);
        __syncthreads();
      }
      if (delta_rule) {
        for_each_slot_batch<kForwardChunkRowBatch>(c_tiles, first, count, [&](int r0, int n, int row) {
          bool any_tokens = false, any_live = false;
          for (int i = 0; i < n; ++i) {
            any_tokens |= has_tokens[r0 + i] != 0;
            any_live |= live[r0 + i] != 0;
          }
          WarpTile tiles[kForwardChunkRowBatch] = {};
          if (any_tokens) {
            multiply_accumulate<false, RightLoad::kScale>(tiles, n, t_inverse + row * t_ld, t_ld,
                                                          {values, ld, 0, tokens + r0 * C, C, 1}, C);
          }
          if (any_live) {  // tiles = W X̄_r − Z_r, stored negated
            for (WarpTile& tile : tiles)
#pragma unroll
              for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                  tile.c[h][e] = -tile.c[h][e];
            multiply_accumulate<false, RightLoad::kRound>(
                tiles, n, operand + row * w_ld, w_ld, {states + r0 * l.slot_floats(), ld, l.slot_floats()},
                K);
          }
          store_tiles</*kRound=*/true>(tiles, n, group_buffers + (r0 - first) * l.rows_floats() + row * ld,
                                       l.rows_floats(), ld, any_live ? -1.f : 1.f);
        });
      } else {
        for (int r = first; r < first + count; ++r) {  // a slot at a time: no division by C per entry
          for (int i = threadIdx.x; i < C * kTile; i += kThreads) {
            const int c = i / kTile, offset = c * ld + i % kTile;
            group_buffers[(r - first) * l.rows_floats() + offset] =
                __uint_as_float(tf32_bits(tokens[r * C + c] * values[offset]));
          }
        }
      }
      __syncthreads();
      copy_rows_async<kThreads>(operand, k_ld, a.k_to_end + chunk * CK, C, K);
      commit_copies();
      if (first + count >= S && n + 1 < l.chunks) {  // the last writes are done
        copy_write_operands(chunk + 1);
        commit_copies();
        wait_copies<1>();  // K̃'s copies, which were committed first
      } else {
        wait_copies<0>();
      }
      round_copied_to_tf32<kThreads>(operand, k_ld, K, C);
      __syncthreads();
      for_each_slot_batch<kForwardKeyRowBatch>(k_tiles, first, count, [&](int r0, int n, int row) {
        bool any_live = false;
        for (int i = 0; i < n; ++i)
          any_live |= live[r0 + i] != 0;
        if (!any_live) return;
        float* state = states + r0 * l.slot_floats() + row * ld;
        WarpTile tiles[kForwardKeyRowBatch];
        load_tiles(tiles, n, state, l.slot_floats(), ld, decay);
        multiply_accumulate<true, RightLoad::kRounded>(
            tiles, n, operand + row, k_ld,
            {group_buffers + (r0 - first) * l.rows_floats(), ld, l.rows_floats()}, C);
        store_tiles(tiles, n, state, l.slot_floats(), ld, 1.f);
      });
      __syncthreads();
    }
  }
  __syncthreads();
  store_states(a.final_states + head * SKV, states, l, first_column, ~0u);
}

/// TState: the element type of the G and dΔ it stores (float, or bf16 with compact states).
template <class TState>
__global__ void __launch_bounds__(kThreads, 1) slot_pass_backward_kernel(SlotPassBackwardArgs a, Layout l) {
  extern __shared__ __align__(128) float shared[];
  float* states = shared + l.states();  // G: the gradient of the states after the chunk being undone
  float* group_buffers = shared + l.group_buffers();  // dΔ_r
  float* operand = shared + l.operand();              // K̃, then W, then q̃
  float* d_inter = shared + l.inter();
  float* weights = shared + l.weights();
  float* moves = shared + l.moves();

  const auto [S, C, K, V, ld, c_tiles, k_tiles, warp, first_column, head, CK, CV, SKV] = block_frame(l);
  const bool delta_rule = a.w != nullptr;
  const int k_rows_ld = l.operand_ld(), k_columns_ld = l.column_operand_ld();
  // Starts copying a [C, K] operand of this chunk into `operand`, rows ld apart, and waits for it (and for
  // every copy started before) once the block has done `meanwhile`; the copying threads round it to TF32.
  const auto load_operand = [&](const float* src, int operand_ld, auto meanwhile) {
    copy_rows_async<kThreads>(operand, operand_ld, src, C, K);
    commit_copies();
    meanwhile();
    wait_copies<0>();
    round_copied_to_tf32<kThreads>(operand, operand_ld, K, C);
    __syncthreads();
  };

  for (int s = 0; s < S; ++s)
    copy_columns_async<kThreads>(states + s * l.slot_floats(), ld, a.d_final_states + (head * S + s) * K * V,
                                 V, first_column, kTile, K);
  commit_copies();
  wait_copies<0>();
  __syncthreads();

  for (int n = l.chunks - 1; n >= 0; --n) {
    // G is complete and every buffer is free. The chunk's small operands travel with K̃'s copies.
    const size_t chunk = head * l.chunks + n;
    copy_floats_async<kThreads>(weights, a.read_weight + chunk * C * S, C * S);
    copy_floats_async<kThreads>(moves, a.state_move + chunk * S * S, S * S);
    copy_columns_async<kThreads>(d_inter, ld, a.d_inter + chunk * CV, V, first_column, kTile, C);
    const float decay = __ldg(a.chunk_decay + chunk);
    // Slots dead in the chunk's transitions held zero and received nothing: their dΔ_r and dX̄_r are zero. A
    // slot dead at the chunk's start is zero and depends on no input: its gradient is never used (it meets
    // zero factors only), so its read term is skipped.
    const unsigned live_after = __ldg(a.live_slots + chunk),
                   live_before = n > 0 ? __ldg(a.live_slots + chunk - 1) : 0u;
    const unsigned stored = a.write_dead_slots ? ~0u : live_after;  // G_r and dΔ_r that are read
    const auto any_live = [](unsigned mask, int first, int count) {
      return (mask >> first) & ((1u << count) - 1u);
    };

    // dΔ_r = K̃ G_r, then dX̄_r = e G_r − Wᵀ dΔ_r in place of G_r, a group of slots at a time.
    for (int first = 0; first < S; first += l.group) {
      const int count = min(l.group, S - first);
      load_operand(a.k_to_end + chunk * CK, k_rows_ld, [&] {
        if (first != 0) return;
        store_states(static_cast<TState*>(a.d_end_states) + chunk * SKV, states, l, first_column, stored);
      });
      for_each_slot_batch<kChunkRowBatch>(c_tiles, first, count, [&](int r0, int n, int row) {
        WarpTile tiles[kChunkRowBatch] = {};
        if (any_live(live_after, r0, n)) {
          multiply_accumulate<false, RightLoad::kRound>(tiles, n, operand + row * k_rows_ld, k_rows_ld,
                                                        {states + r0 * l.slot_floats(), ld, l.slot_floats()},
                                                        K);
        }
        store_tiles(tiles, n, group_buffers + (r0 - first) * l.rows_floats() + row * ld, l.rows_floats(), ld,
                    1.f);
      });
      __syncthreads();
      const auto store_written = [&] {
        for (int r = first; r < first + count; ++r) {
          if (((stored >> r) & 1u) == 0) continue;
          const float* written = group_buffers + (r - first) * l.rows_floats();
          store_columns(static_cast<TState*>(a.d_written) + (chunk * S + r) * CV, V, first_column, written,
                        ld, C);
        }
      };
      if (delta_rule) {
        load_operand(a.w + chunk * CK, k_columns_ld, store_written);
        for_each_slot_batch<kKeyRowBatch>(k_tiles, first, count, [&](int r0, int n, int row) {
          float* state = states + r0 * l.slot_floats() + row * ld;
          WarpTile tiles[kKeyRowBatch] = {};
          if (any_live(live_after, r0, n)) {
            // −dX̄_r = Wᵀ dΔ_r − e G_r, stored negated
            load_tiles(tiles, n, state, l.slot_floats(), ld, -decay);
            multiply_accumulate<true, RightLoad::kRound>(
                tiles, n, operand + row, k_columns_ld,
                {group_buffers + (r0 - first) * l.rows_floats(), ld, l.rows_floats()}, C);
          }
          store_tiles(tiles, n, state, l.slot_floats(), ld, -1.f);
        });
      } else {
        store_written();
        for (int i = threadIdx.x; i < count * l.slot_floats(); i += kThreads)
          states[first * l.slot_floats() + i] *= decay;
      }
      __syncthreads();
    }

    // dX_s = Σ_r M[r, s] dX̄_r + q̃ᵀ (w_s ⊙ d_inter), the move while q̃ is copied.
    load_operand(a.transported_q + chunk * CK, k_columns_ld,
                 [&] { move_between_slots(states, moves, l, /*transposed=*/true); });
    for_each_slot_batch<kKeyRowBatch>(k_tiles, 0, S, [&](int s0, int n, int row) {
      if (!any_live(live_before, s0, n)) return;
      float* state = states + s0 * l.slot_floats() + row * ld;
      WarpTile tiles[kKeyRowBatch];
      load_tiles(tiles, n, state, l.slot_floats(), ld, 1.f);
      multiply_accumulate<true, RightLoad::kScale>(tiles, n, operand + row, k_columns_ld,
                                                   {d_inter, ld, 0, weights + s0, 1, S}, C);
      store_tiles(tiles, n, state, l.slot_floats(), ld, 1.f);
    });
    __syncthreads();
  }
}

constexpr int kMoveThreads = 256;

/// One block per kMoveThreads float4 entries of one chunk; each thread moves its entry of every slot.
__global__ void __launch_bounds__(kMoveThreads)
    move_slot_states_kernel(SlotMoveArgs a, int blocks_per_chunk) {
  __shared__ float moves[kMaxSlots * kMaxSlots];
  const int S = static_cast<int>(a.slots);
  const int64_t chunk = blockIdx.x / blocks_per_chunk;
  const int64_t per_slot = a.entries / 4;
  const int64_t entry = static_cast<int64_t>(blockIdx.x % blocks_per_chunk) * kMoveThreads + threadIdx.x;
  for (int i = threadIdx.x; i < S * S; i += kMoveThreads)
    moves[i] = __ldg(a.moves + chunk * S * S + i);
  __syncthreads();
  if (entry >= per_slot) return;
  const float4* source = reinterpret_cast<const float4*>(a.states) + chunk * S * per_slot + entry;
  float4* sink = reinterpret_cast<float4*>(a.moved) + chunk * S * per_slot + entry;
  float4 x[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    if (s < S) x[s] = __ldg(source + s * per_slot);
  }
#pragma unroll 1
  for (int r = 0; r < S; ++r) {
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      if (s < S) {
        const float m = moves[r * S + s];
        sum.x += m * x[s].x;
        sum.y += m * x[s].y;
        sum.z += m * x[s].z;
        sum.w += m * x[s].w;
      }
    }
    sink[r * per_slot] = sum;
  }
}

Layout layout_of(const SlotPassDims& dims, int group, bool forward, int pad) {
  return {static_cast<int>(dims.chunks),
          static_cast<int>(dims.chunk_size),
          static_cast<int>(dims.key_dim),
          static_cast<int>(dims.value_dim),
          static_cast<int>(dims.slots),
          group,
          forward,
          pad};
}

/// The dynamic shared memory a block may take: the kernels' static shared memory (the slot flags) comes out
/// of the same budget.
int max_shared_bytes() {
  return dla::ops::kernels::max_shared_bytes() - static_cast<int>(4 * kMaxSlots * sizeof(int));
}

/// The first layout that fits: all slots in one group with wide padding, then with narrow padding and as
/// many slots per group as fit; group 0 when none does.
Layout fitting_layout(const SlotPassDims& dims, bool forward) {
  const size_t limit = static_cast<size_t>(std::max(max_shared_bytes(), 0));
  const int slots = static_cast<int>(dims.slots);
  if (const Layout wide = layout_of(dims, slots, forward, kWidePad); shared_bytes(wide) <= limit) return wide;
  for (int group = slots; group >= 1; --group) {
    const Layout l = layout_of(dims, group, forward, kPad);
    if (shared_bytes(l) <= limit) return l;
  }
  return layout_of(dims, 0, forward, kPad);
}

dim3 grid_of(const SlotPassDims& dims) {
  return dim3(static_cast<unsigned>((dims.value_dim + kTile - 1) / kTile),
              static_cast<unsigned>(dims.batch_heads));
}

template <class Kernel, class Args>
const char* launch(Kernel kernel, const Args& args, const SlotPassDims& dims, bool forward, void* stream) {
  const Layout l = fitting_layout(dims, forward);
  const size_t bytes = shared_bytes(l);
  cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) return cudaGetErrorString(error);
  kernel<<<grid_of(dims), kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(args, l);
  error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace

bool supports_slot_pass(const SlotPassDims& dims) {
  constexpr int64_t kMaxInt = 1 << 30;
  if (dims.slots < 1 || dims.slots > kMaxSlots || dims.chunk_size < kTile || dims.chunk_size % kTile != 0 ||
      dims.key_dim < kTile || dims.key_dim % kTile != 0 || dims.value_dim < 4 || dims.value_dim % 4 != 0)
    return false;
  if (dims.batch_heads < 1 || dims.batch_heads > 65535 || dims.chunks < 1 || dims.chunks > kMaxInt ||
      dims.value_dim > kMaxInt || dims.key_dim > 4096 || dims.chunk_size > 4096)
    return false;
  return fitting_layout(dims, /*forward=*/true).group >= 1 &&
         fitting_layout(dims, /*forward=*/false).group >= 1;
}

bool supports_slot_move(int64_t slots, int64_t entries) {
  return slots >= 1 && slots <= kMaxSlots && entries >= 4 && entries % 4 == 0 &&
         entries / 4 <= (int64_t{1} << 30);
}

const char* move_slot_states(const SlotMoveArgs& args, void* stream) {
  const int64_t blocks_per_chunk = (args.entries / 4 + kMoveThreads - 1) / kMoveThreads;
  const int64_t blocks = args.chunks * blocks_per_chunk;
  if (blocks < 1) return nullptr;
  if (blocks > std::numeric_limits<int>::max()) return "move_slot_states: too many chunks for one grid";
  move_slot_states_kernel<<<static_cast<unsigned>(blocks), kMoveThreads, 0,
                            static_cast<cudaStream_t>(stream)>>>(args, static_cast<int>(blocks_per_chunk));
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

const char* slot_pass_forward(const SlotPassForwardArgs& args, const SlotPassDims& dims, void* stream) {
  return launch(slot_pass_forward_kernel, args, dims, /*forward=*/true, stream);
}

const char* slot_pass_backward(const SlotPassBackwardArgs& args, const SlotPassDims& dims, void* stream) {
  return args.compact_states
             ? launch(slot_pass_backward_kernel<__nv_bfloat16>, args, dims, /*forward=*/false, stream)
             : launch(slot_pass_backward_kernel<float>, args, dims, /*forward=*/false, stream);
}

}  // namespace dla::memory::kernels
