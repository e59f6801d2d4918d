// The slot pass's forward with bf16 operands (dla/memory/slot_pass.h), for compact states at C = 64, K = 128
// and at most 8 slots: the form of the forward in slot_pass.cu, Δ_r = Z_r − W X̄_r and X'_r = e X̄_r + K̃ᵀ Δ_r
// with Z_r = T (m_r ⊙ v), on bf16 tensor cores (m16n8k16, float32 accumulation) with every fragment loaded by
// ldmatrix. One thread block of 16 warps per (batch·head, 16 value columns), as there; but the states stay
// in registers, in float32: warp w owns rows 16 (w mod 8) .. + 15 and columns 8 (w / 8) .. + 7 of all slots,
// as the accumulators of the products that update them, so moving states between slots takes no shared
// memory. The products' operands are bf16 in shared memory: the chunk's W, K̃, T⁻¹ and v (converted before
// the pass, and copied a chunk ahead), the moved states X̄ and the writes Δ, rounded as they are stored.
// Rounding X̄ and Δ to bf16 for the products is what flash-linear-attention's chunked kernels do with theirs.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

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
using dla::ops::kernels::copy_async;
using dla::ops::kernels::copy_floats_async;
using dla::ops::kernels::copy_rows_async;
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

// Row lengths in bf16 entries: a multiple of 8 (16-byte rows for ldmatrix and cp.async) whose byte length is
// 16 mod 32 or 8 words apart in banks, so that the 8 rows of an ldmatrix block fall on distinct banks.
constexpr int kWideLd = kKeys + 8;     // W and K̃: 272 bytes
constexpr int kSquareLd = kChunk + 8;  // T⁻¹: 144 bytes
constexpr int kTileLd = kColumns + 8;  // [*, 16] blocks: 48 bytes

/// One chunk's operands, copied a chunk ahead into the other of two.
struct ChunkOperands {
  bf16 w[kChunk * kWideLd];
  bf16 k_to_end[kChunk * kWideLd];
  bf16 t_inverse[kChunk * kSquareLd];
  bf16 values[kChunk * kTileLd];
  float tokens[kMaxSlots * kChunk];
  float moves[kMaxSlots * kMaxSlots];
};

struct Shared {
  ChunkOperands chunks[2];
  bf16 moved[kMaxSlots][kKeys * kTileLd];     // X̄_r, the right operand of W X̄_r
  bf16 written[kMaxSlots][kChunk * kTileLd];  // Δ_r, the right operand of K̃ᵀ Δ_r
  int has_tokens[kMaxSlots], moved_live[kMaxSlots], identity_row[kMaxSlots];
};
static_assert(sizeof(ChunkOperands) % 16 == 0, "each buffer starts 16-byte aligned");

/// Starts copying `columns` (a multiple of 8) bf16 columns of `rows` rows, src_ld apart, to dst (rows dst_ld
/// apart), 16 bytes a copy.
__device__ void copy_bf16_async(bf16* dst, int dst_ld, const bf16* src, size_t src_ld, int columns,
                                int rows) {
  const int per_row = columns / 8;
  for (int i = threadIdx.x; i < rows * per_row; i += kThreads) {
    const int row = i / per_row, part = 8 * (i % per_row);
    copy_async(reinterpret_cast<float*>(dst + row * dst_ld + part),
               reinterpret_cast<const float*>(src + row * src_ld + part));
  }
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

__global__ void __launch_bounds__(kThreads, 1)
    slot_pass_forward_bf16_kernel(SlotPassForwardBf16Args a, int chunks, int slots, int value_dim) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  Shared& sh = *reinterpret_cast<Shared*>(shared_bytes);
  const int S = slots, V = value_dim;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int g = lane / 4, t = lane % 4;
  const int first_column = static_cast<int>(blockIdx.x) * kColumns;
  const size_t head = blockIdx.y;
  const bool delta_rule = a.w != nullptr;
  const auto* w = static_cast<const bf16*>(a.w);
  const auto* k_to_end = static_cast<const bf16*>(a.k_to_end);
  const auto* t_inverse = static_cast<const bf16*>(a.t_inverse);
  const auto* source_v = static_cast<const bf16*>(a.source_v);

  // This warp's part of every slot's state, the accumulator of an m16n8 product: rows key_row and key_row +
  // 8, columns column and column + 1 of the block's 16.
  const int key_tile = warp % kKeyTiles, half = warp / kKeyTiles;
  const int key_row = 16 * key_tile + g, column = 8 * half + 2 * t;
  float state[kMaxSlots][4] = {};
  unsigned live = 0;  // the slots live at the chunk's start; the same in every thread

  const auto copy_chunk = [&](int buffer, size_t chunk) {
    ChunkOperands& o = sh.chunks[buffer];
    if (delta_rule) {
      copy_bf16_async(o.w, kWideLd, w + chunk * kChunk * kKeys, kKeys, kKeys, kChunk);
      copy_bf16_async(o.t_inverse, kSquareLd, t_inverse + chunk * kChunk * kChunk, kChunk, kChunk, kChunk);
    }
    copy_bf16_async(o.k_to_end, kWideLd, k_to_end + chunk * kChunk * kKeys, kKeys, kKeys, kChunk);
    copy_bf16_async(o.values, kTileLd, source_v + chunk * kChunk * V + first_column, V, kColumns, kChunk);
    copy_rows_async<kThreads>(o.tokens, kChunk, a.token_move + chunk * S * kChunk, S, kChunk);
    copy_floats_async<kThreads>(o.moves, a.state_move + chunk * S * S, S * S);
    commit_copies();
  };
  copy_chunk(0, head * chunks);

  for (int n = 0; n < chunks; ++n) {
    const size_t chunk = head * chunks + n;
    const ChunkOperands& o = sh.chunks[n % 2];
    // The start states of the live slots; those of dead slots are left unset (their readers skip them).
    bf16* start = static_cast<bf16*>(a.start_states) + chunk * S * kKeys * V + first_column + column;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      if (s >= S || ((live >> s) & 1u) == 0) continue;
      bf16* row = start + (static_cast<size_t>(s) * kKeys + key_row) * V;
      *reinterpret_cast<unsigned*>(row) = bf16_pair(state[s][0], state[s][1]);
      *reinterpret_cast<unsigned*>(row + 8 * V) = bf16_pair(state[s][2], state[s][3]);
    }
    const float decay = __ldg(a.chunk_decay + chunk);
    wait_copies<0>();
    __syncthreads();  // the chunk's operands are in, and every warp is done with the previous chunk

    if (warp < S) {  // a warp per slot: does a token land in it, does a live state move to it
      const int s = warp;
      bool any_token = false;
      for (int c = lane; c < kChunk; c += 32)
        any_token |= o.tokens[s * kChunk + c] != 0.f;
      const float move = lane < S ? o.moves[s * S + lane] : 0.f;
      const bool moved_in = __any_sync(0xffffffffu, move != 0.f && ((live >> lane) & 1u));
      const bool identity_row = __all_sync(0xffffffffu, lane >= S || move == (lane == s ? 1.f : 0.f));
      any_token = __any_sync(0xffffffffu, any_token);
      if (lane == 0) {
        sh.has_tokens[s] = any_token;
        sh.moved_live[s] = moved_in;
        sh.identity_row[s] = identity_row;
      }
    }
    __syncthreads();
    unsigned tokens = 0, moved_live = 0;
    bool identity = true;
    for (int s = 0; s < S; ++s) {
      tokens |= sh.has_tokens[s] ? 1u << s : 0u;
      moved_live |= sh.moved_live[s] ? 1u << s : 0u;
      identity = identity && sh.identity_row[s];
    }
    const unsigned next_live = tokens | moved_live;
    if (blockIdx.x == 0 && threadIdx.x == 0) a.live_slots[chunk] = next_live;
    if (n + 1 < chunks) copy_chunk((n + 1) % 2, chunk + 1);  // into the buffer the previous chunk used

    // X̄_r = Σ_s M[r, s] X_s, in registers, an entry of every slot at a time (within the registers).
    if (!identity) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float entries[kMaxSlots];
#pragma unroll
        for (int s = 0; s < kMaxSlots; ++s)
          entries[s] = state[s][e];
#pragma unroll
        for (int r = 0; r < kMaxSlots; ++r) {
          float sum = 0.f;
#pragma unroll
          for (int s = 0; s < kMaxSlots; ++s)
            if (r < S && s < S) sum += o.moves[r * S + s] * entries[s];
          state[r][e] = sum;
        }
      }
    }

    // Δ_r = Z_r − W X̄_r, stored in bf16.
    if (delta_rule) {
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        if (s >= S || ((moved_live >> s) & 1u) == 0) continue;
        bf16* row = sh.moved[s] + key_row * kTileLd + column;
        *reinterpret_cast<unsigned*>(row) = bf16_pair(state[s][0], state[s][1]);
        *reinterpret_cast<unsigned*>(row + 8 * kTileLd) = bf16_pair(state[s][2], state[s][3]);
      }
      __syncthreads();
      for (int item = warp; item < kChunkTiles * S; item += kWarps) {
        const int row = 16 * (item % kChunkTiles), r = item / kChunkTiles;
        const bool has_tokens = (tokens >> r) & 1u, has_state = (moved_live >> r) & 1u;
        if (!has_tokens && !has_state) continue;  // a dead slot: Δ_r is never read
        float tile[2][4] = {};
        if (has_tokens) {  // T (m_r ⊙ v): v's fragments scaled by the token mask of their rows
          for (int c = 0; c < kChunk; c += 16) {
            unsigned t_fragment[4], v_fragments[4];
            load_blocks<4, false>(t_fragment, block_rows(o.t_inverse, kSquareLd, row, c, lane));
            load_blocks<4, true>(v_fragments, block_rows(o.values, kTileLd, c, 0, lane));
            const float* mask = o.tokens + r * kChunk + c + 2 * t;
            const float2 low = *reinterpret_cast<const float2*>(mask);
            const float2 high = *reinterpret_cast<const float2*>(mask + 8);
            const unsigned mask_low = bf16_pair(low.x, low.y), mask_high = bf16_pair(high.x, high.y);
            mma_bf16(tile[0], t_fragment, multiply_pairs(v_fragments[0], mask_low),
                     multiply_pairs(v_fragments[1], mask_high));
            mma_bf16(tile[1], t_fragment, multiply_pairs(v_fragments[2], mask_low),
                     multiply_pairs(v_fragments[3], mask_high));
          }
        }
        if (has_state) {  // tile = W X̄_r − Z_r, stored negated
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              tile[h][e] = -tile[h][e];
#pragma unroll 2
          for (int k = 0; k < kKeys; k += 16) {
            unsigned w_fragment[4], x_fragments[4];
            load_blocks<4, false>(w_fragment, block_rows(o.w, kWideLd, row, k, lane));
            load_blocks<4, true>(x_fragments, block_rows(sh.moved[r], kTileLd, k, 0, lane));
            mma_bf16(tile[0], w_fragment, x_fragments[0], x_fragments[1]);
            mma_bf16(tile[1], w_fragment, x_fragments[2], x_fragments[3]);
          }
        }
        const float sign = has_state ? -1.f : 1.f;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          bf16* out = sh.written[r] + (row + g) * kTileLd + 8 * h + 2 * t;
          *reinterpret_cast<unsigned*>(out) = bf16_pair(sign * tile[h][0], sign * tile[h][1]);
          *reinterpret_cast<unsigned*>(out + 8 * kTileLd) = bf16_pair(sign * tile[h][2], sign * tile[h][3]);
        }
      }
    } else {  // Δ_r = m_r ⊙ v for the slots tokens land in
      for (int r = 0; r < S; ++r) {
        if (((tokens >> r) & 1u) == 0) continue;
        for (int i = threadIdx.x; i < kChunk * kColumns / 2; i += kThreads) {
          const int c = i / (kColumns / 2), offset = c * kTileLd + 2 * (i % (kColumns / 2));
          const float m = o.tokens[r * kChunk + c];
          *reinterpret_cast<unsigned*>(sh.written[r] + offset) =
              multiply_pairs(*reinterpret_cast<const unsigned*>(o.values + offset), bf16_pair(m, m));
        }
      }
    }
    __syncthreads();

    // X'_r = e X̄_r + K̃ᵀ Δ_r, into the registers that hold X̄_r: K̃ᵀ's fragments are the same for every slot.
    unsigned k_fragments[kChunkTiles][4];
#pragma unroll
    for (int c = 0; c < kChunkTiles; ++c)
      load_blocks<4, true>(k_fragments[c],
                           transposed_block_rows(o.k_to_end, kWideLd, 16 * c, 16 * key_tile, lane));
    const unsigned written = delta_rule ? next_live : tokens;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      if (s >= S || ((next_live >> s) & 1u) == 0) continue;  // a dead slot holds zeros
#pragma unroll
      for (int e = 0; e < 4; ++e)
        state[s][e] *= decay;
      if (((written >> s) & 1u) == 0) continue;
#pragma unroll
      for (int c = 0; c < kChunkTiles; c += 2) {
        // Δ_s's rows 16c .. 16c + 31 at this warp's 8 columns: B fragments of two depth steps.
        unsigned d_fragments[4];
        load_blocks<4, true>(d_fragments, sh.written[s] + (16 * c + lane) * kTileLd + 8 * half);
        mma_bf16(state[s], k_fragments[c], d_fragments[0], d_fragments[1]);
        mma_bf16(state[s], k_fragments[c + 1], d_fragments[2], d_fragments[3]);
      }
    }
    live = next_live;
  }

  float* final_states = a.final_states + head * S * kKeys * V + first_column + column;
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    if (s >= S) continue;
    float* row = final_states + (static_cast<size_t>(s) * kKeys + key_row) * V;
    *reinterpret_cast<float2*>(row) = make_float2(state[s][0], state[s][1]);
    *reinterpret_cast<float2*>(row + 8 * V) = make_float2(state[s][2], state[s][3]);
  }
}

}  // namespace

bool supports_slot_pass_forward_bf16(const SlotPassDims& dims) {
  return dims.chunk_size == kChunk && dims.key_dim == kKeys && dims.slots >= 1 && dims.slots <= kMaxSlots &&
         dims.value_dim >= kColumns && dims.value_dim % kColumns == 0 && dims.value_dim <= (1 << 30) &&
         dims.batch_heads >= 1 && dims.batch_heads <= 65535 && dims.chunks >= 1 &&
         dims.chunks <= (int64_t{1} << 30) &&
         static_cast<int>(sizeof(Shared)) <= dla::ops::kernels::max_shared_bytes();
}

const char* slot_pass_forward_bf16(const SlotPassForwardBf16Args& args, const SlotPassDims& dims,
                                   void* stream) {
  const int bytes = static_cast<int>(sizeof(Shared));
  cudaError_t error =
      cudaFuncSetAttribute(slot_pass_forward_bf16_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (error != cudaSuccess) return cudaGetErrorString(error);
  const dim3 grid(static_cast<unsigned>(dims.value_dim / kColumns), static_cast<unsigned>(dims.batch_heads));
  slot_pass_forward_bf16_kernel<<<grid, kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(
      args, static_cast<int>(dims.chunks), static_cast<int>(dims.slots), static_cast<int>(dims.value_dim));
  error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace dla::memory::kernels
