// CUDA kernels of the multi-state slot pass (dla/memory/slot_pass.h): one thread block per (batch·head, 16
// value columns) carries the [K, 16] slices of all S slot states through every chunk in shared memory. With
// X̄_r = Σ_s M[r, s] X_s the states moved to their slots, each chunk is (docs/memory/policies.md)
//   forward   Δ_r = Z_r − W X̄_r,   X'_r = e X̄_r + K̃ᵀ Δ_r,   Z_r = T (m_r ⊙ v)
//   backward  dΔ_r = K̃ G_r,   dX̄_r = e G_r − Wᵀ dΔ_r,   dX_s = Σ_r M[r, s] dX̄_r + q̃ᵀ (w_s ⊙ d_inter)
// (no W and T for SSD). The forward writes every chunk's start states; the reads from them are one batched
// matmul outside. The products are 16 × 16 tiles on tensor cores (WMMA, TF32 in, float32 out), sixteen
// warps taking the tiles of all slots in turn; moving states between slots is per entry, in registers.
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "../ops/cuda_launch.cuh"
#include "../ops/tf32_fragments.cuh"
#include "slot_pass_kernels.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's slot-pass kernels use TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using namespace nvcuda;
using dla::ops::kernels::round_to_tf32;

constexpr int kThreads = 512;  // 16 warps: within 128 registers, no spills
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // WMMA tile edge, and the value columns per block
constexpr int kStep = 8;   // WMMA depth of one TF32 product
constexpr int kMaxSlots = 16;
constexpr int kPad = 4;       // shared rows are padded by 4 floats: float4 alignment, fewer bank conflicts
constexpr int kInFlight = 4;  // float4 loads each thread keeps in flight

using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, kStep, float>;
template <class Layout>
using OperandA = wmma::fragment<wmma::matrix_a, kTile, kTile, kStep, wmma::precision::tf32, Layout>;
using OperandB = wmma::fragment<wmma::matrix_b, kTile, kTile, kStep, wmma::precision::tf32, wmma::row_major>;

/// Shared-memory layout in floats. Every buffer the tensor cores read starts 32-byte aligned: C and K are
/// multiples of 16 and the padded row lengths multiples of 4. Each direction holds only its own buffers:
/// the forward T⁻¹ and the landed values, the backward d_inter and the read weights.
struct Layout {
  int chunks, chunk_size, key_dim, value_dim, slots;
  int group;     ///< slots whose [C, 16] buffers are held at once
  bool forward;  ///< the forward kernel's buffers, else the backward's

  __host__ __device__ int tile_ld() const { return kTile + kPad; }
  __host__ __device__ int operand_ld() const { return key_dim + kPad; }
  __host__ __device__ int square_ld() const { return chunk_size + kPad; }
  __host__ __device__ int slot_floats() const { return key_dim * tile_ld(); }
  __host__ __device__ int rows_floats() const { return chunk_size * tile_ld(); }

  __host__ __device__ int states() const { return 0; }
  __host__ __device__ int group_buffers() const { return states() + slots * slot_floats(); }
  __host__ __device__ int operand() const { return group_buffers() + group * rows_floats(); }
  __host__ __device__ int square() const { return operand() + chunk_size * operand_ld(); }  // forward: T⁻¹
  __host__ __device__ int scratch() const {  // forward: the values landing in one slot
    return square() + (forward ? chunk_size * square_ld() : 0);
  }
  __host__ __device__ int inter() const { return scratch() + (forward ? rows_floats() : 0); }  // backward
  __host__ __device__ int weights() const { return inter() + (forward ? 0 : rows_floats()); }  // backward
  __host__ __device__ int moves() const { return weights() + (forward ? 0 : chunk_size * slots); }
  __host__ __device__ int tokens() const { return moves() + slots * slots; }  // forward
  __host__ __device__ int total() const { return tokens() + (forward ? slots * chunk_size : 0); }
};

size_t shared_bytes(const Layout& l) {
  return sizeof(float) * static_cast<size_t>(l.total());
}

// ---- products on tensor cores ----

/// acc += A B over `depth` (a multiple of 8), A 16 × depth, B depth × 16 row-major with rows b_ld apart.
/// Row-major A is A(i, j) = a[i·a_ld + j]; column-major A is A(i, j) = a[i + j·a_ld]. A is already rounded
/// to TF32 (load_operand rounds the left operands once, where each fragment would round them at every use);
/// B, the states or what the products wrote, is rounded here.
template <class ALayout>
__device__ void multiply_accumulate(Accumulator& acc, const float* a, int a_ld, const float* b, int b_ld,
                                    int depth) {
  constexpr bool kRowMajor = std::is_same_v<ALayout, wmma::row_major>;
  for (int j = 0; j < depth; j += kStep) {
    OperandA<ALayout> a_fragment;
    OperandB b_fragment;
    wmma::load_matrix_sync(a_fragment, kRowMajor ? a + j : a + j * a_ld, a_ld);
    wmma::load_matrix_sync(b_fragment, b + j * b_ld, b_ld);
    round_to_tf32(b_fragment);
    wmma::mma_sync(acc, a_fragment, b_fragment, acc);
  }
}

/// The 16 × 16 tile at `tile` (ld tile_ld) becomes scale · tile + A B.
template <class ALayout>
__device__ void update_tile(float* tile, int tile_ld, float scale, const float* a, int a_ld, const float* b,
                            int b_ld, int depth) {
  Accumulator acc;
  wmma::load_matrix_sync(acc, tile, tile_ld, wmma::mem_row_major);
#pragma unroll
  for (int t = 0; t < acc.num_elements; ++t)
    acc.x[t] *= scale;
  multiply_accumulate<ALayout>(acc, a, a_ld, b, b_ld, depth);
  wmma::store_matrix_sync(tile, acc, tile_ld, wmma::mem_row_major);
}

/// The 16 × 16 tile at `tile` becomes A B.
__device__ void product_tile(float* tile, int tile_ld, const float* a, int a_ld, const float* b, int b_ld,
                             int depth) {
  Accumulator acc;
  wmma::fill_fragment(acc, 0.f);
  multiply_accumulate<wmma::row_major>(acc, a, a_ld, b, b_ld, depth);
  wmma::store_matrix_sync(tile, acc, tile_ld, wmma::mem_row_major);
}

// ---- copies between global and shared memory, as float4s ----

/// For i < n: sink(i, source(i)), keeping kInFlight loads per thread in flight.
template <class Source, class Sink>
__device__ void copy_vectors(int n, Source source, Sink sink) {
  for (int base = threadIdx.x; base < n; base += kThreads * kInFlight) {
    float4 values[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * kThreads < n) values[u] = source(base + u * kThreads);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * kThreads < n) sink(base + u * kThreads, values[u]);
    }
  }
}

__device__ float4 scaled(float4 x, float s) {
  return make_float4(s * x.x, s * x.y, s * x.z, s * x.w);
}

__device__ float4 rounded_to_tf32(float4 x) {
  return make_float4(wmma::__float_to_tf32(x.x), wmma::__float_to_tf32(x.y), wmma::__float_to_tf32(x.z),
                     wmma::__float_to_tf32(x.w));
}

/// A products' left operand: dst (rows dst_ld apart) = scale · src rounded to TF32, from a [rows, cols]
/// row-major global block (cols a multiple of 4).
__device__ void load_operand(float* dst, int dst_ld, const float* __restrict__ src, int rows, int cols,
                             float scale) {
  const int per_row = cols / 4;
  copy_vectors(
      rows * per_row, [&](int i) { return __ldg(reinterpret_cast<const float4*>(src) + i); },
      [&](int i, float4 x) {
        *reinterpret_cast<float4*>(dst + (i / per_row) * dst_ld + 4 * (i % per_row)) =
            rounded_to_tf32(scaled(x, scale));
      });
}

/// dst (rows dst_ld apart) = the 16 columns from first_column of a [rows, value_dim] global matrix, zero
/// past its end; row r scaled by row_scale[r] when given.
__device__ void load_columns(float* dst, int dst_ld, const float* __restrict__ src, int rows, int value_dim,
                             int first_column, const float* row_scale) {
  constexpr int kPerRow = kTile / 4;
  copy_vectors(
      rows * kPerRow,
      [&](int i) {
        const int column = first_column + 4 * (i % kPerRow);
        return column < value_dim ? __ldg(reinterpret_cast<const float4*>(
                                        src + static_cast<size_t>(i / kPerRow) * value_dim + column))
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
      },
      [&](int i, float4 x) {
        const int row = i / kPerRow;
        *reinterpret_cast<float4*>(dst + row * dst_ld + 4 * (i % kPerRow)) =
            row_scale != nullptr ? scaled(x, row_scale[row]) : x;
      });
}

/// The 16 columns from first_column of a [rows, value_dim] global matrix = src (rows src_ld apart).
__device__ void store_columns(float* dst, int value_dim, int first_column, const float* src, int src_ld,
                              int rows) {
  constexpr int kPerRow = kTile / 4;
  for (int i = threadIdx.x; i < rows * kPerRow; i += kThreads) {
    const int column = first_column + 4 * (i % kPerRow);
    if (column < value_dim) {
      *reinterpret_cast<float4*>(dst + static_cast<size_t>(i / kPerRow) * value_dim + column) =
          *reinterpret_cast<const float4*>(src + (i / kPerRow) * src_ld + 4 * (i % kPerRow));
    }
  }
}

__device__ void load_floats(float* dst, const float* __restrict__ src, int n) {
  for (int i = threadIdx.x; i < n; i += kThreads)
    dst[i] = __ldg(src + i);
}

// ---- per-block steps ----

/// Moves the states between slots, entry by entry: out_r = Σ_s M[r, s] x_s, or Σ_s M[s, r] x_s (the
/// backward's transpose). Each thread owns its entries in every slot, so no other thread reads them. The
/// slot count is a template argument so that the sources unroll without per-slot guards.
template <int S>
__device__ void move_slots(float* states, const float* moves, const Layout& l, bool transposed) {
  for (int e = threadIdx.x; e < l.key_dim * kTile; e += kThreads) {
    const int offset = (e / kTile) * l.tile_ld() + e % kTile;
    float x[S];
#pragma unroll
    for (int s = 0; s < S; ++s)
      x[s] = states[s * l.slot_floats() + offset];
      // Unrolling the destinations too lets the compiler hoist the move entries' loads and spill.
#pragma unroll 1
    for (int r = 0; r < S; ++r) {
      float sum = 0.f;
#pragma unroll
      for (int s = 0; s < S; ++s)
        sum += (transposed ? moves[s * S + r] : moves[r * S + s]) * x[s];
      states[r * l.slot_floats() + offset] = sum;
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

__device__ void store_states(float* dst, const float* states, const Layout& l, int first_column) {
  const size_t slot_stride = static_cast<size_t>(l.key_dim) * l.value_dim;
  for (int s = 0; s < l.slots; ++s)
    store_columns(dst + s * slot_stride, l.value_dim, first_column, states + s * l.slot_floats(), l.tile_ld(),
                  l.key_dim);
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
  float* group_buffers = shared + l.group_buffers();
  float* operand = shared + l.operand();
  float* t_inverse = shared + l.square();
  float* scratch = shared + l.scratch();
  float* moves = shared + l.moves();
  float* tokens = shared + l.tokens();

  const auto [S, C, K, V, ld, c_tiles, k_tiles, warp, first_column, head, CK, CV, SKV] = block_frame(l);
  const bool delta_rule = a.w != nullptr;

  for (int i = threadIdx.x; i < S * l.slot_floats(); i += kThreads)
    states[i] = 0.f;
  if (threadIdx.x < kMaxSlots) live[threadIdx.x] = 0;

  for (int n = 0; n < l.chunks; ++n) {
    const size_t chunk = head * l.chunks + n;
    __syncthreads();  // the states are complete and every buffer is free
    store_states(a.start_states + chunk * SKV, states, l, first_column);
    if (delta_rule) load_operand(t_inverse, l.square_ld(), a.t_inverse + chunk * C * C, C, C, 1.f);
    load_floats(moves, a.state_move + chunk * S * S, S * S);
    load_floats(tokens, a.token_move + chunk * S * C, S * C);
    const float decay = __ldg(a.chunk_decay + chunk);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < S) {
      const int s = threadIdx.x;
      int any_token = 0, next = 0;
      for (int c = 0; c < C; ++c)
        any_token |= tokens[s * C + c] != 0.f;
      for (int source = 0; source < S; ++source)
        next |= moves[s * S + source] != 0.f && live[source];
      has_tokens[s] = any_token;
      next_live[s] = next || any_token;
    }
    __syncthreads();

    move_between_slots(states, moves, l, /*transposed=*/false);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < S) live[threadIdx.x] = next_live[threadIdx.x];

    // Writes and transitions, a group of slots at a time: Δ_r = Z_r − W X̄_r, then X'_r = e X̄_r + K̃ᵀ Δ_r.
    for (int first = 0; first < S; first += l.group) {
      const int count = min(l.group, S - first);
      if (delta_rule) load_operand(operand, l.operand_ld(), a.w + chunk * CK, C, K, -1.f);
      for (int r = first; r < first + count; ++r) {
        float* written = group_buffers + (r - first) * l.rows_floats();
        if (!has_tokens[r]) {
          for (int i = threadIdx.x; i < l.rows_floats(); i += kThreads)
            written[i] = 0.f;
          continue;
        }
        // Z_r = T (m_r ⊙ v), or m_r ⊙ v without the delta rule.
        load_columns(delta_rule ? scratch : written, ld, a.source_v + chunk * CV, C, V, first_column,
                     tokens + r * C);
        if (!delta_rule) continue;
        __syncthreads();
        for (int t = warp; t < c_tiles; t += kWarps)
          product_tile(written + t * kTile * ld, ld, t_inverse + t * kTile * l.square_ld(), l.square_ld(),
                       scratch, ld, C);
        __syncthreads();
      }
      __syncthreads();
      if (delta_rule) {
        for (int t = warp; t < count * c_tiles; t += kWarps) {
          const int r = first + t / c_tiles, row = (t % c_tiles) * kTile;
          if (!live[r]) continue;
          update_tile<wmma::row_major>(group_buffers + (r - first) * l.rows_floats() + row * ld, ld, 1.f,
                                       operand + row * l.operand_ld(), l.operand_ld(),
                                       states + r * l.slot_floats(), ld, K);
        }
        __syncthreads();
      }
      load_operand(operand, l.operand_ld(), a.k_to_end + chunk * CK, C, K, 1.f);
      __syncthreads();
      for (int t = warp; t < count * k_tiles; t += kWarps) {
        const int r = first + t / k_tiles, row = (t % k_tiles) * kTile;
        if (!live[r]) continue;
        update_tile<wmma::col_major>(states + r * l.slot_floats() + row * ld, ld, decay, operand + row,
                                     l.operand_ld(), group_buffers + (r - first) * l.rows_floats(), ld, C);
      }
      __syncthreads();
    }
  }
  __syncthreads();
  store_states(a.final_states + head * SKV, states, l, first_column);
}

__global__ void __launch_bounds__(kThreads, 1) slot_pass_backward_kernel(SlotPassBackwardArgs a, Layout l) {
  extern __shared__ __align__(128) float shared[];
  float* states = shared + l.states();  // G: the gradient of the states after the chunk being undone
  float* group_buffers = shared + l.group_buffers();
  float* operand = shared + l.operand();
  float* d_inter = shared + l.inter();
  float* weights = shared + l.weights();
  float* moves = shared + l.moves();

  const auto [S, C, K, V, ld, c_tiles, k_tiles, warp, first_column, head, CK, CV, SKV] = block_frame(l);
  const bool delta_rule = a.w != nullptr;

  for (int s = 0; s < S; ++s)
    load_columns(states + s * l.slot_floats(), ld, a.d_final_states + (head * S + s) * K * V, K, V,
                 first_column, nullptr);

  for (int n = l.chunks - 1; n >= 0; --n) {
    const size_t chunk = head * l.chunks + n;
    __syncthreads();  // G is complete and every buffer is free
    store_states(a.d_end_states + chunk * SKV, states, l, first_column);
    load_floats(weights, a.read_weight + chunk * C * S, C * S);
    load_floats(moves, a.state_move + chunk * S * S, S * S);
    load_columns(d_inter, ld, a.d_inter + chunk * CV, C, V, first_column, nullptr);
    const float decay = __ldg(a.chunk_decay + chunk);

    // dΔ_r = K̃ G_r, then dX̄_r = e G_r − Wᵀ dΔ_r in place of G_r, a group of slots at a time.
    for (int first = 0; first < S; first += l.group) {
      const int count = min(l.group, S - first);
      load_operand(operand, l.operand_ld(), a.k_to_end + chunk * CK, C, K, 1.f);
      __syncthreads();
      for (int t = warp; t < count * c_tiles; t += kWarps) {
        const int r = first + t / c_tiles, row = (t % c_tiles) * kTile;
        product_tile(group_buffers + (r - first) * l.rows_floats() + row * ld, ld,
                     operand + row * l.operand_ld(), l.operand_ld(), states + r * l.slot_floats(), ld, K);
      }
      __syncthreads();
      for (int r = first; r < first + count; ++r) {
        store_columns(a.d_written + (chunk * S + r) * CV, V, first_column,
                      group_buffers + (r - first) * l.rows_floats(), ld, C);
      }
      if (delta_rule) {
        load_operand(operand, l.operand_ld(), a.w + chunk * CK, C, K, -1.f);
        __syncthreads();
        for (int t = warp; t < count * k_tiles; t += kWarps) {
          const int r = first + t / k_tiles, row = (t % k_tiles) * kTile;
          update_tile<wmma::col_major>(states + r * l.slot_floats() + row * ld, ld, decay, operand + row,
                                       l.operand_ld(), group_buffers + (r - first) * l.rows_floats(), ld, C);
        }
      } else {
        for (int i = threadIdx.x; i < count * l.slot_floats(); i += kThreads)
          states[first * l.slot_floats() + i] *= decay;
      }
      __syncthreads();
    }

    move_between_slots(states, moves, l, /*transposed=*/true);
    load_operand(operand, l.operand_ld(), a.transported_q + chunk * CK, C, K, 1.f);
    __syncthreads();

    // dX_s += q̃ᵀ (w_s ⊙ d_inter), a group of slots at a time.
    for (int first = 0; first < S; first += l.group) {
      const int count = min(l.group, S - first);
      for (int i = threadIdx.x; i < count * C * kTile; i += kThreads) {
        const int s = first + i / (C * kTile), c = (i / kTile) % C, offset = c * ld + i % kTile;
        group_buffers[(s - first) * l.rows_floats() + offset] = weights[c * S + s] * d_inter[offset];
      }
      __syncthreads();
      for (int t = warp; t < count * k_tiles; t += kWarps) {
        const int s = first + t / k_tiles, row = (t % k_tiles) * kTile;
        update_tile<wmma::col_major>(states + s * l.slot_floats() + row * ld, ld, 1.f, operand + row,
                                     l.operand_ld(), group_buffers + (s - first) * l.rows_floats(), ld, C);
      }
      __syncthreads();
    }
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

Layout layout_of(const SlotPassDims& dims, int group, bool forward) {
  return {static_cast<int>(dims.chunks),
          static_cast<int>(dims.chunk_size),
          static_cast<int>(dims.key_dim),
          static_cast<int>(dims.value_dim),
          static_cast<int>(dims.slots),
          group,
          forward};
}

/// The dynamic shared memory a block may take: the kernels' static shared memory (the slot flags) comes out
/// of the same budget.
int max_shared_bytes() {
  return dla::ops::kernels::max_shared_bytes() - static_cast<int>(4 * kMaxSlots * sizeof(int));
}

/// The layout with as many slots per group as fit (all of them when they do); group 0 when none fits.
Layout fitting_layout(const SlotPassDims& dims, bool forward) {
  const size_t limit = static_cast<size_t>(std::max(max_shared_bytes(), 0));
  for (int group = static_cast<int>(dims.slots); group >= 1; --group) {
    const Layout l = layout_of(dims, group, forward);
    if (shared_bytes(l) <= limit) return l;
  }
  return layout_of(dims, 0, forward);
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
  return launch(slot_pass_backward_kernel, args, dims, /*forward=*/false, stream);
}

}  // namespace dla::memory::kernels
