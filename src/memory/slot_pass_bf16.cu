// The slot pass's sequential kernels with bf16 operands (dla/memory/slot_pass.h), for compact states at
// C = 64, K = 128 and at most 8 slots: the forms of slot_pass.cu,
//   forward   Δ_r = Z_r − W X̄_r,   X'_r = e X̄_r + K̃ᵀ Δ_r,   Z_r = T (m_r ⊙ v)
//   backward  dΔ_r = K̃ G_r,   dX̄_r = e G_r − Wᵀ dΔ_r,   dX_s = Σ_r M[r, s] dX̄_r + q̃ᵀ (w_s ⊙ d_inter)
// on bf16 tensor cores (m16n8k16, float32 accumulation) with every fragment loaded by ldmatrix. One thread
// block of 16 warps per (batch·head, 16 value columns), as there; but the states (forward X, backward G)
// stay in registers, in float32: warp w owns rows 16 (w mod 8) .. + 15 and columns 8 (w / 8) .. + 7 of every
// slot, as the accumulators of the products that update them. The products' operands are bf16 in shared
// memory: the chunk's W, K̃, T⁻¹, v, q̃ and d_inter (converted before the pass, and copied a chunk ahead),
// and the states and per-token rows of each slot (X̄ and Δ, G and −dΔ), rounded as they are stored, as
// flash-linear-attention's chunked kernels round theirs. States move between slots through a float32 copy
// staged in the same shared memory. What goes to global memory every chunk (forward X, backward G and dΔ)
// leaves from those shared copies, 16 bytes a thread, so that a warp writes whole 32-byte sectors: stored
// from the accumulator registers, 4 bytes at a time, it was a third of the forward's stalls.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "../ops/async_copy.cuh"
#include "../ops/bf16_fragments.cuh"
#include "../ops/cuda_launch.cuh"
#include "slot_pass_kernels.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's slot-pass kernels use bf16 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using dla::ops::kernels::bf16_pair;
using dla::ops::kernels::commit_copies;
using dla::ops::kernels::copy_floats_async;
using dla::ops::kernels::copy_rows_async;
using dla::ops::kernels::copy_tile_async;
using dla::ops::kernels::load_blocks;
using dla::ops::kernels::mma_bf16;
using dla::ops::kernels::multiply_pairs;
using dla::ops::kernels::wait_copies;
using bf16 = __nv_bfloat16;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 64;
constexpr int kKeys = 128;
constexpr int kColumns = 16;  // value columns per block
constexpr int kMaxSlots = 8;  // the states of 8 slots are 32 registers a thread
constexpr int kKeyTiles = kKeys / 16;
constexpr int kChunkTiles = kChunk / 16;
static_assert(2 * kKeyTiles == kWarps, "each warp owns one 16 × 8 tile of every slot's state");
static_assert(kMaxSlots <= kWarps, "the flags take a warp per slot");
static_assert(kChunk * kColumns / 2 == kThreads, "a thread per pair of entries of a [C, 16] operand");
// The per-token rows' products: each warp takes one 16-row tile of two slots, r and r + kSlotStride.
constexpr int kSlotStride = kWarps / kChunkTiles;
static_assert(kChunkTiles * kMaxSlots == 2 * kWarps, "a warp takes one row tile of two slots");

// Row lengths in bf16 entries: a multiple of 8 (16-byte rows for ldmatrix and cp.async) whose byte length is
// 16 mod 32 or 8 words apart in banks, so that the 8 rows of an ldmatrix block fall on distinct banks.
constexpr int kWideLd = kKeys + 8;     // [C, K] operands: 272 bytes
constexpr int kSquareLd = kChunk + 8;  // T⁻¹: 144 bytes
constexpr int kTileLd = kColumns + 8;  // [*, 16] blocks: 48 bytes

/// One forward chunk's operands, copied a chunk ahead into the other of two.
struct ForwardOperands {
  bf16 w[kChunk * kWideLd];
  bf16 k_to_end[kChunk * kWideLd];
  bf16 t_inverse[kChunk * kSquareLd];
  bf16 values[kChunk * kTileLd];
  float tokens[kMaxSlots * kChunk];
  float moves[kMaxSlots * kMaxSlots];
};
/// One backward chunk's.
struct BackwardOperands {
  bf16 k_to_end[kChunk * kWideLd];
  bf16 w[kChunk * kWideLd];
  bf16 q[kChunk * kWideLd];
  bf16 d_inter[kChunk * kTileLd];
  float weights[kChunk * kMaxSlots];  // [C, S]
  float moves[kMaxSlots * kMaxSlots];
};
static_assert(sizeof(ForwardOperands) % 16 == 0 && sizeof(BackwardOperands) % 16 == 0,
              "each buffer starts 16-byte aligned");

/// The products' right operands: the states (forward X̄, backward G) and the chunk's rows of each slot
/// (forward Δ, backward −dΔ); before them, while the states move, the states in float32.
struct SlotOperands {
  bf16 states[kMaxSlots][kKeys * kTileLd];
  bf16 rows[kMaxSlots][kChunk * kTileLd];
};
union SlotBuffers {
  SlotOperands operands;
  float staged[kMaxSlots][kKeys * kColumns];  // rows swizzled (staged_entry)
};

/// What a warp per slot works out of a chunk's moves, for every thread.
struct MoveFlags {
  unsigned sources[kMaxSlots];  ///< bit s of sources[r] set where slot s moves to slot r
  int kept[kMaxSlots];          ///< whether slot r keeps its own state only
};

template <class Operands>
struct Shared {
  Operands chunks[2];
  SlotBuffers slots;
  MoveFlags moves;
  int has_tokens[kMaxSlots], moved_live[kMaxSlots];  // forward
};
/// The backward's, with the right operands of its reads, w_s ⊙ d_inter for each slot s.
struct BackwardShared : Shared<BackwardOperands> {
  bf16 weighted[kMaxSlots][kChunk * kTileLd];
};

/// Entry (row, column) of a staged [K, 16] float32 state: rows 16 floats long, with the two 8-column halves
/// swapped in rows 2 and 3 mod 4, so that the float2 accesses of an accumulator's lanes fall on distinct
/// banks.
__device__ int staged_entry(int row, int column) {
  return row * kColumns + (column ^ (((row >> 1) & 1) * 8));
}

/// The row address lane `lane` gives ldmatrix for the 16 × 16 block at (row, column) of a row-major bf16
/// matrix (rows ld apart), as its 8 × 8 blocks (0, 0), (8, 0), (0, 8), (8, 8): loaded as stored, the block's
/// A fragment; loaded transposed, the B fragments of its two 8-column halves (r[0], r[1] the left half's).
__device__ const bf16* block_rows(const bf16* m, int ld, int row, int column, int lane) {
  return m + (row + lane % 16) * ld + column + (lane / 16) * 8;
}
/// The same for the A fragment of the block's transpose, the block of m at (row, column) being Aᵀ: blocks
/// (0, 0), (0, 8), (8, 0), (8, 8) of m, loaded transposed.
__device__ const bf16* transposed_block_rows(const bf16* m, int ld, int row, int column, int lane) {
  return m + (row + lane % 8 + (lane / 16) * 8) * ld + column + ((lane / 8) % 2) * 8;
}

/// A thread's entries of every slot's [K, 16] state, held as the accumulator of an m16n8 product: warp w owns
/// rows 16 (w mod 8) .. + 15 and columns 8 (w / 8) .. + 7; lane (g, t) rows row and row + 8, columns column
/// and column + 1.
struct StateTiles {
  float x[kMaxSlots][4] = {};
  int row, column;

  __device__ StateTiles() {
    const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
    row = 16 * (warp % kKeyTiles) + lane / 4;
    column = 8 * (warp / kKeyTiles) + 2 * (lane % 4);
  }

  /// Stores the slots in `slots` as the bf16 right operands of the next products.
  __device__ void store_operands(SlotOperands& operands, unsigned slots, int S) const {
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      if (s >= S || ((slots >> s) & 1u) == 0) continue;
      bf16* at = operands.states[s] + row * kTileLd + column;
      *reinterpret_cast<unsigned*>(at) = bf16_pair(x[s][0], x[s][1]);
      *reinterpret_cast<unsigned*>(at + 8 * kTileLd) = bf16_pair(x[s][2], x[s][3]);
    }
  }

  /// Stages the slots' states in float32 in the buffers, whose last readers must be done.
  __device__ void stage(SlotBuffers& buffers, int S) const {
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      if (s >= S) continue;
      *reinterpret_cast<float2*>(buffers.staged[s] + staged_entry(row, column)) =
          make_float2(x[s][0], x[s][1]);
      *reinterpret_cast<float2*>(buffers.staged[s] + staged_entry(row + 8, column)) =
          make_float2(x[s][2], x[s][3]);
    }
  }

  /// x_r = Σ_s moves(r, s) x_s over the staged states, with moves(r, s) = M[r, s], or M[s, r] when
  /// kTransposed: each slot gathered from its sources (a slot moves to at most one other), except the slots
  /// that keep their own state. The staging must be visible to the block.
  template <bool kTransposed>
  __device__ void gather(const SlotBuffers& buffers, const MoveFlags& flags, const float* moves, int S) {
#pragma unroll
    for (int r = 0; r < kMaxSlots; ++r) {
      if (r >= S || flags.kept[r]) continue;
      float sum[4] = {};
      for (unsigned sources = flags.sources[r]; sources != 0; sources &= sources - 1) {
        const int s = __ffs(static_cast<int>(sources)) - 1;
        const float m = kTransposed ? moves[s * S + r] : moves[r * S + s];
        const float2 top = *reinterpret_cast<const float2*>(buffers.staged[s] + staged_entry(row, column));
        const float2 bottom =
            *reinterpret_cast<const float2*>(buffers.staged[s] + staged_entry(row + 8, column));
        sum[0] += m * top.x;
        sum[1] += m * top.y;
        sum[2] += m * bottom.x;
        sum[3] += m * bottom.y;
      }
#pragma unroll
      for (int e = 0; e < 4; ++e)
        x[r][e] = sum[e];
    }
  }

  /// stage, then gather, with the barriers around them; ends with the buffers free for the products.
  template <bool kTransposed>
  __device__ void move(SlotBuffers& buffers, const MoveFlags& flags, const float* moves, int S) {
    stage(buffers, S);
    __syncthreads();
    gather<kTransposed>(buffers, flags, moves, S);
    __syncthreads();
  }
};

/// Stores kRows × 16 bf16 entries of each slot in `slots` (a bit each) to a [S, kRows, V] global buffer at
/// the block's first column, with piece(s, row, column) the 8 entries of slot s at (row, column .. + 7): a
/// thread per 8 columns of a row, so that a warp writes whole 32-byte sectors.
template <int kRows, class Piece>
__device__ void store_slot_rows(bf16* dst, int value_dim, unsigned slots, int S, Piece piece) {
  constexpr int kPieces = kRows * kColumns / 8;  // per slot
  static_assert(kThreads % kPieces == 0 && kMaxSlots % (kThreads / kPieces) == 0);
  constexpr int kSlotsPerPass = kThreads / kPieces, kPasses = kMaxSlots / kSlotsPerPass;
  const int piece_index = static_cast<int>(threadIdx.x) % kPieces, first_slot = threadIdx.x / kPieces;
  const int row = piece_index / 2, column = 8 * (piece_index % 2);
  dst += static_cast<size_t>(row) * value_dim + column;
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int s = first_slot + pass * kSlotsPerPass;
    if (s < S && ((slots >> s) & 1u) != 0)
      *reinterpret_cast<uint4*>(dst + static_cast<size_t>(s) * kRows * value_dim) = piece(s, row, column);
  }
}

/// Stores the staged states of the slots in `slots` to a [S, K, V] global buffer, as bf16.
__device__ void store_staged(bf16* dst, int value_dim, const SlotBuffers& buffers, unsigned slots, int S) {
  store_slot_rows<kKeys>(dst, value_dim, slots, S, [&](int s, int row, int column) {
    const float* from = buffers.staged[s] + staged_entry(row, column);
    const float4 low = *reinterpret_cast<const float4*>(from),
                 high = *reinterpret_cast<const float4*>(from + 4);
    return make_uint4(bf16_pair(low.x, low.y), bf16_pair(low.z, low.w), bf16_pair(high.x, high.y),
                      bf16_pair(high.z, high.w));
  });
}

/// Stores the bf16 state operands of the slots in `slots` to a [S, K, V] global buffer.
__device__ void store_state_operands(bf16* dst, int value_dim, const SlotOperands& operands, unsigned slots,
                                     int S) {
  store_slot_rows<kKeys>(dst, value_dim, slots, S, [&](int s, int row, int column) {
    return *reinterpret_cast<const uint4*>(operands.states[s] + row * kTileLd + column);
  });
}

/// Stores the negated bf16 row operands of the slots in `slots` to a [S, C, V] global buffer.
__device__ void store_negated_rows(bf16* dst, int value_dim, const SlotOperands& operands, unsigned slots,
                                   int S) {
  constexpr unsigned kSigns = 0x80008000u;  // of a bf16 pair
  store_slot_rows<kChunk>(dst, value_dim, slots, S, [&](int s, int row, int column) {
    const uint4 pairs = *reinterpret_cast<const uint4*>(operands.rows[s] + row * kTileLd + column);
    return make_uint4(pairs.x ^ kSigns, pairs.y ^ kSigns, pairs.z ^ kSigns, pairs.w ^ kSigns);
  });
}

/// Warp r < S of the block: the sources of slot r under the moves (row r of M, or column r when kTransposed)
/// and whether they are r alone with weight 1. Returns the move weight of source `lane` (0 past S).
template <bool kTransposed>
__device__ float find_sources(MoveFlags& flags, const float* moves, int S, int r, int lane) {
  const float move = lane < S ? (kTransposed ? moves[lane * S + r] : moves[r * S + lane]) : 0.f;
  const bool kept = __all_sync(0xffffffffu, lane >= S || move == (lane == r ? 1.f : 0.f));
  const unsigned sources = __ballot_sync(0xffffffffu, lane < S && move != 0.f);
  if (lane == 0) {
    flags.kept[r] = kept;
    flags.sources[r] = sources;
  }
  return move;
}

/// Whether every slot keeps its own state (M = I), from the flags after a barrier.
__device__ bool all_kept(const MoveFlags& flags, int S) {
  bool kept = true;
  for (int s = 0; s < S; ++s)
    kept = kept && flags.kept[s];
  return kept;
}

/// The 16 × 16 tile `tile` (an accumulator pair: columns 0..7, 8..15) times sign, as bf16 at dst (rows ld
/// apart): lane (g, t) writes rows g and g + 8, columns 2t, 2t + 1 of each half.
__device__ void store_tile(bf16* dst, size_t ld, const float (&tile)[2][4], float sign, int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    bf16* at = dst + g * ld + 8 * h + 2 * t;
    *reinterpret_cast<unsigned*>(at) = bf16_pair(sign * tile[h][0], sign * tile[h][1]);
    *reinterpret_cast<unsigned*>(at + 8 * ld) = bf16_pair(sign * tile[h][2], sign * tile[h][3]);
  }
}

/// x_s += Aᵀ B_s for the slots in `slots`, A a [C, K] bf16 operand whose rows 16 · key tile .. + 15 of the
/// transpose this warp takes, and B_s = rows(s) [C, 16] bf16 at this warp's 8 columns; scale(s, c, pair)
/// scales B_s's fragment registers as they load (the identity when it returns pair unchanged).
template <class Rows, class Scale>
__device__ void add_transposed_products(StateTiles& states, const bf16* a, unsigned slots, int S, Rows rows,
                                        Scale scale) {
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int key_tile = warp % kKeyTiles, half = warp / kKeyTiles;
  unsigned a_fragments[kChunkTiles][4];  // the same for every slot
#pragma unroll
  for (int c = 0; c < kChunkTiles; ++c)
    load_blocks<4, true>(a_fragments[c], transposed_block_rows(a, kWideLd, 16 * c, 16 * key_tile, lane));
    // Two depth steps at a time for every slot, so that consecutive products are of different slots and do
    // not wait for each other.
#pragma unroll
  for (int c = 0; c < kChunkTiles; c += 2) {
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      if (s >= S || ((slots >> s) & 1u) == 0) continue;
      // B_s's rows 16c .. 16c + 31 at this warp's 8 columns: the B fragments of the two steps.
      unsigned b[4];
      load_blocks<4, true>(b, rows(s) + (16 * c + lane) * kTileLd + 8 * half);
      mma_bf16(states.x[s], a_fragments[c], scale(s, 16 * c, 0, b[0]), scale(s, 16 * c, 1, b[1]));
      mma_bf16(states.x[s], a_fragments[c + 1], scale(s, 16 * c + 16, 0, b[2]),
               scale(s, 16 * c + 16, 1, b[3]));
    }
  }
}

/// tiles[i] += A B_i for i < kCount and the 16-row tile at `row` of A: A a [*, kDepth] bf16 operand (rows
/// a_ld apart) whose fragments are loaded once for all kCount products, B_i [kDepth, 16] bf16 operands (rows
/// kTileLd apart), both 8-column halves. Unrolled whole, so that the fragments' loads are issued ahead of the
/// products that wait for them.
template <int kDepth, int kCount>
__device__ void add_row_products(float (*tiles)[2][4], const bf16* a, int a_ld, int row, const bf16* const* b,
                                 int lane) {
#pragma unroll
  for (int k = 0; k < kDepth; k += 16) {
    unsigned a_fragment[4];
    load_blocks<4, false>(a_fragment, block_rows(a, a_ld, row, k, lane));
#pragma unroll
    for (int i = 0; i < kCount; ++i) {
      unsigned b_fragments[4];
      load_blocks<4, true>(b_fragments, block_rows(b[i], kTileLd, k, 0, lane));
      mma_bf16(tiles[i][0], a_fragment, b_fragments[0], b_fragments[1]);
      mma_bf16(tiles[i][1], a_fragment, b_fragments[2], b_fragments[3]);
    }
  }
}

/// add_row_products for the i in {0, 1} with used[i].
template <int kDepth>
__device__ void add_row_products_where(float (&tiles)[2][2][4], const bf16* a, int a_ld, int row,
                                       const bf16* const (&b)[2], const bool (&used)[2], int lane) {
  if (used[0] && used[1]) {
    add_row_products<kDepth, 2>(tiles, a, a_ld, row, b, lane);
  } else if (used[0]) {
    add_row_products<kDepth, 1>(tiles, a, a_ld, row, b, lane);
  } else if (used[1]) {
    add_row_products<kDepth, 1>(tiles + 1, a, a_ld, row, b + 1, lane);
  }
}

/// out(s) = diag(scale(s, ·)) x for the slots s in `slots` (a bit each), x a [C, 16] bf16 operand and out(s)
/// one of the same layout: a thread per pair of entries, x's pair loaded once for all slots.
template <class Out, class Scale>
__device__ void scale_rows(const bf16* x, unsigned slots, int S, Out out, Scale scale) {
  const int c = static_cast<int>(threadIdx.x) / (kColumns / 2),
            offset = c * kTileLd + 2 * (static_cast<int>(threadIdx.x) % (kColumns / 2));
  const unsigned pair = *reinterpret_cast<const unsigned*>(x + offset);
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    if (s >= S || ((slots >> s) & 1u) == 0) continue;
    const float m = scale(s, c);
    *reinterpret_cast<unsigned*>(out(s) + offset) = multiply_pairs(pair, bf16_pair(m, m));
  }
}

/// The scale of add_transposed_products that leaves the fragments as loaded.
struct Unscaled {
  __device__ unsigned operator()(int, int, int, unsigned pair) const { return pair; }
};

__global__ void __launch_bounds__(kThreads, 1)
    slot_pass_forward_bf16_kernel(SlotPassForwardBf16Args a, int chunks, int slots, int value_dim) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  auto& sh = *reinterpret_cast<Shared<ForwardOperands>*>(shared_bytes);
  const int S = slots, V = value_dim;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int t = lane % 4;
  const int first_column = static_cast<int>(blockIdx.x) * kColumns;
  const size_t head = blockIdx.y;
  const bool delta_rule = a.w != nullptr;
  const auto* w = static_cast<const bf16*>(a.w);
  const auto* k_to_end = static_cast<const bf16*>(a.k_to_end);
  const auto* t_inverse = static_cast<const bf16*>(a.t_inverse);
  const auto* source_v = static_cast<const bf16*>(a.source_v);
  StateTiles states;
  unsigned live = 0;  // the slots live at the chunk's start; the same in every thread

  const auto copy_chunk = [&](int buffer, size_t chunk) {
    ForwardOperands& o = sh.chunks[buffer];
    if (delta_rule) {
      copy_tile_async<kThreads>(o.w, kWideLd, w + chunk * kChunk * kKeys, size_t{kKeys}, kChunk, kKeys);
      copy_tile_async<kThreads>(o.t_inverse, kSquareLd, t_inverse + chunk * kChunk * kChunk, size_t{kChunk},
                                kChunk, kChunk);
    }
    copy_tile_async<kThreads>(o.k_to_end, kWideLd, k_to_end + chunk * kChunk * kKeys, size_t{kKeys}, kChunk,
                              kKeys);
    copy_tile_async<kThreads>(o.values, kTileLd, source_v + chunk * kChunk * V + first_column, size_t(V),
                              kChunk, kColumns);
    copy_rows_async<kThreads>(o.tokens, kChunk, a.token_move + chunk * S * kChunk, S, kChunk);
    copy_floats_async<kThreads>(o.moves, a.state_move + chunk * S * S, S * S);
    commit_copies();
  };
  copy_chunk(0, head * chunks);
  float decay = __ldg(a.chunk_decay + head * chunks);

  for (int n = 0; n < chunks; ++n) {
    const size_t chunk = head * chunks + n;
    const ForwardOperands& o = sh.chunks[n % 2];
    const float next_decay = n + 1 < chunks ? __ldg(a.chunk_decay + chunk + 1) : 0.f;
    wait_copies<0>();
    __syncthreads();  // the chunk's operands are in, and every warp is done with the previous chunk

    // The start states, staged for their store and the move.
    states.stage(sh.slots, S);
    if (warp < S) {  // a warp per slot: does a token land in it, does a live state move to it
      const int r = warp;
      const float move = find_sources<false>(sh.moves, o.moves, S, r, lane);
      const bool moved_in = __any_sync(0xffffffffu, move != 0.f && ((live >> lane) & 1u));
      bool any_token = false;
      for (int c = lane; c < kChunk; c += 32)
        any_token |= o.tokens[r * kChunk + c] != 0.f;
      any_token = __any_sync(0xffffffffu, any_token);
      if (lane == 0) {
        sh.has_tokens[r] = any_token;
        sh.moved_live[r] = moved_in;
      }
    }
    __syncthreads();
    unsigned tokens = 0, moved_live = 0;
    for (int s = 0; s < S; ++s) {
      tokens |= sh.has_tokens[s] ? 1u << s : 0u;
      moved_live |= sh.moved_live[s] ? 1u << s : 0u;
    }
    const unsigned next_live = tokens | moved_live;
    if (blockIdx.x == 0 && threadIdx.x == 0) a.live_slots[chunk] = next_live;
    if (n + 1 < chunks) copy_chunk((n + 1) % 2, chunk + 1);  // into the buffer the previous chunk used

    // The start states of the live slots; those of dead slots are left unset (their readers skip them).
    store_staged(static_cast<bf16*>(a.start_states) + chunk * S * kKeys * V + first_column, V, sh.slots, live,
                 S);
    // X̄_r = Σ_s M[r, s] X_s.
    if (!all_kept(sh.moves, S)) states.gather<false>(sh.slots, sh.moves, o.moves, S);
    __syncthreads();  // the staged states' space holds the products' operands next

    // Δ_r = Z_r − W X̄_r, stored in bf16.
    SlotOperands& operands = sh.slots.operands;
    if (delta_rule) {
      states.store_operands(operands, moved_live, S);
      __syncthreads();
      const int row = 16 * (warp % kChunkTiles);
      const int slot[2] = {warp / kChunkTiles, warp / kChunkTiles + kSlotStride};
      bool has_tokens[2], has_state[2];
      float tiles[2][2][4] = {};
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        has_tokens[i] = slot[i] < S && ((tokens >> slot[i]) & 1u) != 0;
        has_state[i] = slot[i] < S && ((moved_live >> slot[i]) & 1u) != 0;
      }
      // T (m_r ⊙ v): v's fragments scaled by the token mask of their rows, T's and v's loaded once for both
      // slots.
      if (has_tokens[0] || has_tokens[1]) {
#pragma unroll
        for (int c = 0; c < kChunk; c += 16) {
          unsigned t_fragment[4], v_fragments[4];
          load_blocks<4, false>(t_fragment, block_rows(o.t_inverse, kSquareLd, row, c, lane));
          load_blocks<4, true>(v_fragments, block_rows(o.values, kTileLd, c, 0, lane));
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            if (!has_tokens[i]) continue;
            const float* mask = o.tokens + slot[i] * kChunk + c + 2 * t;
            const float2 low = *reinterpret_cast<const float2*>(mask);
            const float2 high = *reinterpret_cast<const float2*>(mask + 8);
            const unsigned mask_low = bf16_pair(low.x, low.y), mask_high = bf16_pair(high.x, high.y);
            mma_bf16(tiles[i][0], t_fragment, multiply_pairs(v_fragments[0], mask_low),
                     multiply_pairs(v_fragments[1], mask_high));
            mma_bf16(tiles[i][1], t_fragment, multiply_pairs(v_fragments[2], mask_low),
                     multiply_pairs(v_fragments[3], mask_high));
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (has_state[i]) {  // tile = W X̄_r − Z_r, stored negated
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              tiles[i][h][e] = -tiles[i][h][e];
        }
      }
      add_row_products_where<kKeys>(tiles, o.w, kWideLd, row,
                                    {operands.states[slot[0]], operands.states[slot[1]]}, has_state, lane);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (!has_tokens[i] && !has_state[i]) continue;  // a dead slot: Δ_r is never read
        store_tile(operands.rows[slot[i]] + row * kTileLd, kTileLd, tiles[i], has_state[i] ? -1.f : 1.f,
                   lane);
      }
    } else {  // Δ_r = m_r ⊙ v for the slots tokens land in
      scale_rows(
          o.values, tokens, S, [&](int r) { return operands.rows[r]; },
          [&](int r, int c) { return o.tokens[r * kChunk + c]; });
    }
    __syncthreads();

    // X'_r = e X̄_r + K̃ᵀ Δ_r, into the registers that hold X̄_r (a dead slot holds zeros).
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        states.x[s][e] *= decay;
    add_transposed_products(
        states, o.k_to_end, delta_rule ? next_live : tokens, S, [&](int r) { return operands.rows[r]; },
        Unscaled{});
    live = next_live;
    decay = next_decay;
  }

  float* final_states = a.final_states + head * S * kKeys * V + first_column + states.column;
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    if (s >= S) continue;
    float* row = final_states + (static_cast<size_t>(s) * kKeys + states.row) * V;
    *reinterpret_cast<float2*>(row) = make_float2(states.x[s][0], states.x[s][1]);
    *reinterpret_cast<float2*>(row + 8 * V) = make_float2(states.x[s][2], states.x[s][3]);
  }
}

/// The backward, chunk by chunk from the last, with G the gradient of the states after the chunk (in the
/// registers, as the forward's states): dΔ_r = K̃ G_r, dX̄_r = e G_r − Wᵀ dΔ_r, dX_s = Σ_r M[r, s] dX̄_r +
/// q̃ᵀ (w_s ⊙ d_inter), which is the G of the chunk before.
__global__ void __launch_bounds__(kThreads, 1)
    slot_pass_backward_bf16_kernel(SlotPassBackwardBf16Args a, int chunks, int slots, int value_dim) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  auto& sh = *reinterpret_cast<BackwardShared*>(shared_bytes);
  const int S = slots, V = value_dim;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int first_column = static_cast<int>(blockIdx.x) * kColumns;
  const size_t head = blockIdx.y;
  const bool delta_rule = a.w != nullptr;
  const auto* w = static_cast<const bf16*>(a.w);
  const auto* k_to_end = static_cast<const bf16*>(a.k_to_end);
  const auto* q = static_cast<const bf16*>(a.transported_q);
  const auto* d_inter = static_cast<const bf16*>(a.d_inter);

  StateTiles states;
  {
    const float* d_final = a.d_final_states + head * S * kKeys * V + first_column + states.column;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      if (s >= S) continue;
      const float* row = d_final + (static_cast<size_t>(s) * kKeys + states.row) * V;
      const float2 top = *reinterpret_cast<const float2*>(row),
                   bottom = *reinterpret_cast<const float2*>(row + 8 * V);
      states.x[s][0] = top.x;
      states.x[s][1] = top.y;
      states.x[s][2] = bottom.x;
      states.x[s][3] = bottom.y;
    }
  }

  const auto copy_chunk = [&](int buffer, size_t chunk) {
    BackwardOperands& o = sh.chunks[buffer];
    copy_tile_async<kThreads>(o.k_to_end, kWideLd, k_to_end + chunk * kChunk * kKeys, size_t{kKeys}, kChunk,
                              kKeys);
    if (delta_rule)
      copy_tile_async<kThreads>(o.w, kWideLd, w + chunk * kChunk * kKeys, size_t{kKeys}, kChunk, kKeys);
    copy_tile_async<kThreads>(o.q, kWideLd, q + chunk * kChunk * kKeys, size_t{kKeys}, kChunk, kKeys);
    copy_tile_async<kThreads>(o.d_inter, kTileLd, d_inter + chunk * kChunk * V + first_column, size_t(V),
                              kChunk, kColumns);
    copy_floats_async<kThreads>(o.weights, a.read_weight + chunk * kChunk * S, kChunk * S);
    copy_floats_async<kThreads>(o.moves, a.state_move + chunk * S * S, S * S);
    commit_copies();
  };
  copy_chunk((chunks - 1) % 2, head * chunks + chunks - 1);
  for (int n = chunks - 1; n >= 0; --n) {
    const size_t chunk = head * chunks + n;
    const BackwardOperands& o = sh.chunks[n % 2];
    // Slots dead in the chunk's transitions held zeros and received nothing: their dΔ_r and dX̄_r are zero.
    // A slot dead at the chunk's start depends on no input: its gradient is never used.
    const unsigned live_after = __ldg(a.live_slots + chunk),
                   live_before = n > 0 ? __ldg(a.live_slots + chunk - 1) : 0u;
    const float decay = __ldg(a.chunk_decay + chunk);
    wait_copies<0>();
    __syncthreads();  // the chunk's operands are in, and every warp is done with the chunk after it
    if (warp < S) find_sources<true>(sh.moves, o.moves, S, warp, lane);
    if (n > 0) copy_chunk((n + 1) % 2, chunk - 1);  // into the buffer the chunk after used
    // w_s ⊙ d_inter for the slots read at the chunk's start, the right operands of the reads' gradients.
    scale_rows(
        o.d_inter, live_before, S, [&](int s) { return sh.weighted[s]; },
        [&](int s, int c) { return o.weights[c * S + s]; });

    // dΔ_r = K̃ G_r, stored negated as the right operand of Wᵀ dΔ_r, and from there to the global buffer.
    SlotOperands& operands = sh.slots.operands;
    states.store_operands(operands, live_after, S);
    __syncthreads();
    store_state_operands(static_cast<bf16*>(a.d_end_states) + chunk * S * kKeys * V + first_column, V,
                         operands, live_after, S);
    {
      const int row = 16 * (warp % kChunkTiles);
      const int slot[2] = {warp / kChunkTiles, warp / kChunkTiles + kSlotStride};
      bool used[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        used[i] = slot[i] < S && ((live_after >> slot[i]) & 1u) != 0;
      float tiles[2][2][4] = {};
      add_row_products_where<kKeys>(tiles, o.k_to_end, kWideLd, row,
                                    {operands.states[slot[0]], operands.states[slot[1]]}, used, lane);
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (used[i]) store_tile(operands.rows[slot[i]] + row * kTileLd, kTileLd, tiles[i], -1.f, lane);
    }
    __syncthreads();
    store_negated_rows(static_cast<bf16*>(a.d_written) + chunk * S * kChunk * V + first_column, V, operands,
                       live_after, S);

    // dX̄_r = e G_r − Wᵀ dΔ_r; zero for slots dead in the chunk.
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      const float scale = ((live_after >> s) & 1u) != 0 ? decay : 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e)
        states.x[s][e] *= scale;
    }
    if (delta_rule) {
      add_transposed_products(
          states, o.w, live_after, S, [&](int r) { return operands.rows[r]; }, Unscaled{});
    }

    // dX_s = Σ_r M[r, s] dX̄_r, then + q̃ᵀ (w_s ⊙ d_inter) for the slots live at the chunk's start: d_inter's
    // fragments scaled by the read weights of their rows.
    if (!all_kept(sh.moves, S)) {
      __syncthreads();  // the products above are done with the buffers
      states.move<true>(sh.slots, sh.moves, o.moves, S);
    }
    add_transposed_products(
        states, o.q, live_before, S, [&](int s) { return sh.weighted[s]; }, Unscaled{});
  }
}

}  // namespace

bool supports_slot_pass_bf16(const SlotPassDims& dims) {
  const int bytes = static_cast<int>(std::max(sizeof(Shared<ForwardOperands>), sizeof(BackwardShared)));
  return dims.chunk_size == kChunk && dims.key_dim == kKeys && dims.slots >= 1 && dims.slots <= kMaxSlots &&
         dims.value_dim >= kColumns && dims.value_dim % kColumns == 0 && dims.value_dim <= (1 << 30) &&
         dims.batch_heads >= 1 && dims.batch_heads <= 65535 && dims.chunks >= 1 &&
         dims.chunks <= (int64_t{1} << 30) && bytes <= dla::ops::kernels::max_shared_bytes();
}

namespace {

template <class Kernel, class Args>
const char* launch_bf16(Kernel kernel, const Args& args, const SlotPassDims& dims, size_t bytes,
                        void* stream) {
  cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) return cudaGetErrorString(error);
  const dim3 grid(static_cast<unsigned>(dims.value_dim / kColumns), static_cast<unsigned>(dims.batch_heads));
  kernel<<<grid, kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(
      args, static_cast<int>(dims.chunks), static_cast<int>(dims.slots), static_cast<int>(dims.value_dim));
  error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace

const char* slot_pass_forward_bf16(const SlotPassForwardBf16Args& args, const SlotPassDims& dims,
                                   void* stream) {
  return launch_bf16(slot_pass_forward_bf16_kernel, args, dims, sizeof(Shared<ForwardOperands>), stream);
}

const char* slot_pass_backward_bf16(const SlotPassBackwardBf16Args& args, const SlotPassDims& dims,
                                    void* stream) {
  return launch_bf16(slot_pass_backward_bf16_kernel, args, dims, sizeof(BackwardShared), stream);
}

}  // namespace dla::memory::kernels
