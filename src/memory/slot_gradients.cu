// CUDA kernels of the slot pass's input gradients (slot_gradients_kernels.h). With X_s a chunk's start
// states, G_r the gradients of its end states, dΔ_r those of its writes, L_r = m_r ⊙ v what lands in slot r,
// and the moves undone, Ḡ_s = Σ_r M[r, s] G_r and dΔ̄_s = Σ_r M[r, s] dΔ_r (docs/memory/policies.md):
//   reads    P_s = d_inter X_sᵀ,  dw[c, s] = ⟨P_s[c], q̃[c]⟩,  dq̃ = Σ_s w_s ⊙ P_s,  dW = −Σ_s dΔ̄_s X_sᵀ
//   carry    Σ_r X̄_r G_rᵀ = Σ_s X_s Ḡ_sᵀ,  de = Σ_s ⟨X_s, Ḡ_s⟩
//   writes   Σ_r L_r G_rᵀ,  dT = Σ_r dΔ_r L_rᵀ,  dv = Σ_r m_r ⊙ (Tᵀ dΔ_r)
// Two kernels, one block of 16 warps per chunk each: the reads and the carry, which both multiply the start
// states X_s, in one (each X_s is read once), and the writes. Each warp holds fixed 32 × 32 output blocks
// whose accumulators stay in registers across the slots (mma.sync on raw fragments, each loaded once per step
// for the block's eight products; TF32 in, or bf16 with compact states, float32 out). The slot states stream
// through shared memory 32 or 64 value columns at a time (Stages), the next stages' asynchronous copies in
// flight while one computes. Slots nothing moves from, or no token lands in, are skipped.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "../ops/async_copy.cuh"
#include "../ops/cuda_launch.cuh"
#include "../ops/tf32_fragments.cuh"
#include "slot_gradients_kernels.h"
#include "warp_blocks.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's slot-gradient kernels use TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using dla::ops::kernels::copy_rows_async;
using dla::ops::kernels::load;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSlots = 16;
constexpr int kPad = 4;  // shared rows are padded by 4 floats: float4 alignment, fewer bank conflicts
constexpr int kStaticSharedBytes = 512;  // the kernels' own small shared arrays
using bf16 = __nv_bfloat16;

__host__ __device__ constexpr int max_of(int a, int b) {
  return a > b ? a : b;
}

/// Floats of shared memory that `rows` rows of T, ld elements apart, take (ld · sizeof(T) a multiple of 16).
template <class T>
__host__ __device__ constexpr int floats_of(int rows, int ld) {
  return rows * ld * static_cast<int>(sizeof(T)) / static_cast<int>(sizeof(float));
}

/// How a kernel streams slot states (T: float, or bf16 for compact states) through shared memory: kColumns
/// value columns a stage, in kBuffers buffers of which all but one have their copies in flight while one
/// computes.
template <class T, int kColumnsPerStage, int kBufferCount>
struct Stages {
  using State = T;
  static constexpr int kColumns = kColumnsPerStage;
  static constexpr int kBuffers = kBufferCount;
  /// A stage row: kColumns + 4 floats, or kColumns + 8 bf16 (16-byte aligned rows whose fragment loads stay
  /// on distinct banks).
  static constexpr int kLd = std::is_same_v<T, float> ? kColumns + kPad : kColumns + 8;
  __host__ __device__ static constexpr int floats(int rows) { return floats_of<T>(rows, kLd); }
};
// One block of a chunk fills an SM, so the copies in flight and the work over which each stage's fixed costs
// (copy set-up, two barriers) spread set the kernels' speed. Stages are 32 columns wide; with bf16 states the
// reads and carry take 64 where shared memory holds them (the writes' value blocks are one stage wide). The
// reads and carry keep three stages of X_s, G_r and dΔ_r, two with float states (their buffers are twice as
// large).
template <class T>
using ReadCarryStages = Stages<T, 32, std::is_same_v<T, float> ? 2 : 3>;
using WideReadCarryStages = Stages<bf16, 64, 3>;
template <class T>
using WriteStages = Stages<T, 32, 4>;

struct Dims {
  int chunks, C, K, V, S;
  bool delta_rule;

  __host__ __device__ int v_ld() const { return V + kPad; }
  __host__ __device__ int k_ld() const { return K + kPad; }
  /// T is read down its columns: rows 8 floats longer than a multiple of 16 keep a fragment load's lanes on
  /// distinct banks.
  __host__ __device__ int t_ld() const { return C + 2 * kPad; }
  /// The write kernel's warp blocks: Σ_r L_r G_rᵀ [C, K], dT [C, C] and one value stage's columns of dv.
  __host__ __device__ int landed_blocks() const { return (C / kBlock) * (K / kBlock); }
  __host__ __device__ int square_blocks() const { return delta_rule ? (C / kBlock) * (C / kBlock) : 0; }
  __host__ __device__ int write_kernel_blocks() const {
    return landed_blocks() + square_blocks() + C / kBlock;
  }
  /// Rows of the [C, V] per-token operands (d_inter, v) and of the [C, C] T⁻¹ held whole in shared memory,
  /// in T: floats v_ld() and t_ld() apart, bf16 8 elements past a multiple of 16.
  template <class T>
  __host__ __device__ int value_ld() const {
    return std::is_same_v<T, float> ? v_ld() : V + 8;
  }
  template <class T>
  __host__ __device__ int square_ld() const {
    return std::is_same_v<T, float> ? t_ld() : C + 8;
  }
  /// Rows of q̃ [C, K] in shared memory, as value_ld.
  template <class T>
  __host__ __device__ int key_ld() const {
    return std::is_same_v<T, float> ? k_ld() : K + 8;
  }
  /// One stage buffer: a slot's [K, kColumns] state columns and a [C, kColumns] block of per-token rows.
  template <class St>
  __host__ __device__ int stage_floats() const {
    return St::floats(K + C);
  }
  /// Stage buffer b of those at `buffers`: a slot's state columns, then the per-token rows.
  template <class St>
  __device__ typename St::State* stage_states(float* buffers, int b) const {
    return reinterpret_cast<typename St::State*>(buffers + b * stage_floats<St>());
  }
  template <class St>
  __device__ typename St::State* stage_rows(float* buffers, int b) const {
    return reinterpret_cast<typename St::State*>(buffers + b * stage_floats<St>() + St::floats(K));
  }
  /// One stage buffer of the reads and carry: a slot's [K, kColumns] state columns X_s, those of G_r, and a
  /// [C, kColumns] block of dΔ_r.
  template <class St>
  __host__ __device__ int read_carry_stage_floats() const {
    return St::floats(2 * K + C);
  }
  /// Rows of the float32 right operands of dK̃'s products, Σ_s X_s Ḡ_sᵀ [K, K] and Σ_r L_r G_rᵀ [C, K]: read
  /// down their columns, rows 8 floats past a multiple of 32 keep a fragment load's lanes on distinct banks.
  __host__ __device__ int sum_ld() const { return K + 2 * kPad; }
  /// The read and carry kernel's d_inter, q̃ and stage buffers, which its last step (dK̃'s carry term) then
  /// takes for W [C, k_ld], Σ_s X_s Ḡ_sᵀ [K, sum_ld] and the write kernel's term [C, sum_ld], in float32.
  template <class St>
  __host__ __device__ int read_carry_front_floats() const {
    using T = typename St::State;
    const int stages = floats_of<T>(C, value_ld<T>()) + floats_of<T>(C, key_ld<T>()) +
                       St::kBuffers * read_carry_stage_floats<St>();
    return delta_rule ? max_of(stages, C * k_ld() + (K + C) * sum_ld()) : stages;
  }
  /// Shared floats of each kernel with its Stages, in the order of its buffers below.
  template <class St>
  __host__ __device__ int read_carry_kernel_floats() const {
    return read_carry_front_floats<St>() + C * k_ld() + C * S + S * S + (K / kBlock) * C * S;
  }
  template <class St>
  __host__ __device__ int write_kernel_floats() const {
    using T = typename St::State;
    const int stages = floats_of<T>(C, value_ld<T>()) + St::kBuffers * stage_floats<St>() +
                       floats_of<T>(C, square_ld<T>()) + S * C;
    return delta_rule ? max_of(stages, C * (C + kPad) + C * sum_ld()) : stages;
  }
};

/// The top-left corner of a warp's 32 × 32 block `b` of a matrix `columns` wide.
__device__ int2 block_corner(int b, int columns) {
  return make_int2((b / (columns / 32)) * 32, (b % (columns / 32)) * 32);
}

// ---- copies into shared memory ----

__device__ void load_floats(float* dst, const float* __restrict__ src, int n) {
  for (int i = threadIdx.x; i < n; i += kThreads)
    dst[i] = __ldg(src + i);
}

/// Entries i and i + 1 of a float or bf16 row, as floats.
__device__ float2 pair_at(const float* p) {
  return *reinterpret_cast<const float2*>(p);
}
__device__ float2 pair_at(const bf16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
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

__device__ size_t block_chunk(const Dims& d) {
  return static_cast<size_t>(blockIdx.y) * d.chunks + blockIdx.x;
}

/// The slots a kernel visits, in order, with each one's partner: where `moves` is given, the slot a source
/// slot's state moves to (−1: none; the moves' columns hold at most one 1), else −1. Only slots in
/// `candidates` (a bit per slot) are listed; with `tokens`, only those some token lands in. Every thread of
/// the block calls it, after `moves` and `tokens` are in shared memory.
struct SlotList {
  int count;
  int slot[kMaxSlots];
  int partner[kMaxSlots];
};

__device__ void list_slots(SlotList& list, const float* moves, const float* tokens, int S, int C,
                           unsigned candidates) {
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
      listed[warp] = ((candidates >> warp) & 1u) && (tokens == nullptr || token_lands);
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

/// dw, dq̃, de and (delta rule) dW of one chunk, and dK̃ = T Σ_r L_r G_rᵀ − W Σ_s X_s Ḡ_sᵀ from the write
/// kernel's term: the reads' and the carry's gradients, which both multiply the start states X_s, so that
/// each is read from global memory once. Stages: every slot s
/// live at the chunk's start, St::kColumns value columns at a time, with X_s and, where s's state moves to a
/// slot r, dΔ_r and G_r. Each warp holds two 32 × 32 blocks: of P_s or dW, and of Σ_s X_s Ḡ_sᵀ. The P_s warps
/// add w_s ⊙ P_s to their block of dq̃ at a slot's end and write their rows' dots with q̃ over their 32 keys,
/// summed over the key blocks at the end, so no warp waits for another between slots.
template <class St>
__global__ void __launch_bounds__(kThreads, 1) read_and_carry_gradients_kernel(SlotGradientArgs a, Dims d) {
  using TState = typename St::State;
  extern __shared__ __align__(128) float shared[];
  __shared__ SlotList list;
  __shared__ float warp_sums[kWarps];
  const int C = d.C, K = d.K, V = d.V, S = d.S, k_ld = d.k_ld();
  constexpr int ld = St::kLd;
  // d_inter and q̃ in the states' type: with bf16 states, P_s = d_inter X_sᵀ runs on bf16 tensor cores.
  auto* d_inter = reinterpret_cast<TState*>(shared);  // [C, inter_ld]
  const int inter_ld = d.value_ld<TState>(), q_ld = d.key_ld<TState>();
  auto* q = reinterpret_cast<TState*>(shared + floats_of<TState>(C, inter_ld));  // q̃ [C, q_ld]
  float* stage_buffers = shared + floats_of<TState>(C, inter_ld) + floats_of<TState>(C, q_ld);
  float* d_q = shared + d.read_carry_front_floats<St>();  // [C, k_ld]
  float* weights = d_q + C * k_ld;                        // [C, S]
  float* moves = weights + C * S;                         // [S, S]
  float* dots = moves + S * S;  // [K / 32, C, S]: ⟨P_s[c], q̃[c]⟩ over each block of 32 keys

  const size_t chunk = block_chunk(d);
  const size_t CK = static_cast<size_t>(C) * K, CV = static_cast<size_t>(C) * V,
               KV = static_cast<size_t>(K) * V;
  const int warp = warp_index(), lane = threadIdx.x % 32;
  if constexpr (std::is_same_v<TState, float>) {
    copy_rows_async<kThreads>(d_inter, inter_ld, a.d_inter + chunk * CV, C, V);
    copy_rows_async<kThreads>(q, q_ld, a.transported_q + chunk * CK, C, K);
  } else {
    load_as_bf16<kThreads>(d_inter, inter_ld, a.d_inter + chunk * CV, C, V);
    load_as_bf16<kThreads>(q, q_ld, a.transported_q + chunk * CK, C, K);
  }
  load_floats(weights, a.read_weight + chunk * C * S, C * S);
  load_floats(moves, a.state_move + chunk * S * S, S * S);
  for (int i = threadIdx.x; i < C * k_ld; i += kThreads)
    d_q[i] = 0.f;
  for (int i = threadIdx.x; i < (K / kBlock) * C * S; i += kThreads)  // the unlisted slots' dots stay zero
    dots[i] = 0.f;
  __syncthreads();
  // Slots dead at the chunk's start hold zero: their reads, dW and carry terms vanish.
  list_slots(list, moves, nullptr, S, C, slots_live_at_start(a.live_slots, chunk, blockIdx.x, S));

  const int read_blocks = (C / kBlock) * (K / kBlock), per_slot = V / St::kColumns;
  const bool reads_block = warp < read_blocks,
             d_w_block = d.delta_rule && !reads_block && warp < 2 * read_blocks;
  const int2 corner = block_corner(reads_block ? warp : warp - read_blocks, K);
  WarpBlock block;
  clear(block);
  // de = Σ_s ⟨X_s, Ḡ_s⟩ is the trace of Σ_s X_s Ḡ_sᵀ. With bf16 states the diagonal blocks' products give it
  // (bf16 products are exact, as in an elementwise sum); float states sum it element by element, as TF32
  // products would round it.
  constexpr bool kDecayFromTrace = !std::is_same_v<TState, float>;
  const int2 gram_corner = block_corner(warp, K);
  const bool diagonal_block = warp < (K / kBlock) * (K / kBlock) && gram_corner.x == gram_corner.y;
  const bool gram_block =
      warp < (K / kBlock) * (K / kBlock) && (d.delta_rule || (kDecayFromTrace && diagonal_block));
  WarpBlock gram;
  clear(gram);
  float decay_grad = 0.f;

  const auto take_reads = [&](int s) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = corner.x + 16 * m + 8 * h + g;
        const float w = weights[row * S + s];
        float dot = 0.f;
#pragma unroll
        for (int n = 0; n < 4; ++n) {  // the lane's two adjacent entries of each 8-column tile
          const int column = corner.y + 8 * n + 2 * t;
          const float p0 = block.c[m][n][2 * h], p1 = block.c[m][n][2 * h + 1];
          auto& sum = *reinterpret_cast<float2*>(d_q + row * k_ld + column);
          const float2 query = pair_at(q + row * q_ld + column);
          sum = make_float2(sum.x + w * p0, sum.y + w * p1);
          dot += p0 * query.x + p1 * query.y;
        }
        dot += __shfl_xor_sync(~0u, dot, 1);
        dot += __shfl_xor_sync(~0u, dot, 2);
        if (t == 0) dots[((corner.y / kBlock) * C + row) * S + s] = dot;
      }
  };

  const StageCopy<kThreads, TState, St::kColumns, ld> copy_states(K, V), copy_rows(C, V);
  const auto* start_states = static_cast<const TState*>(a.start_states) + chunk * S * KV;
  const auto* d_end_states = static_cast<const TState*>(a.d_end_states) + chunk * S * KV;
  const auto* d_written = static_cast<const TState*>(a.d_written) + chunk * S * CV;
  // Stage buffer b: X_s [K, ld], then G_r [K, ld], then dΔ_r [C, ld].
  const auto buffer_x = [&](int b) {
    return reinterpret_cast<TState*>(stage_buffers + b * d.read_carry_stage_floats<St>());
  };
  const auto buffer_g = [&](int b) { return buffer_x(b) + K * ld; };
  const auto buffer_rows = [&](int b) { return buffer_x(b) + 2 * K * ld; };
  run_stages<St::kBuffers>(
      list.count, per_slot,
      [&](Stage k, int b) {  // k: (the slot's place in the list, its stage of value columns)
        const int column = k.inner * St::kColumns, partner = list.partner[k.outer];
        copy_states.start(buffer_x(b), start_states + list.slot[k.outer] * KV + column);
        if (partner < 0) return;
        copy_states.start(buffer_g(b), d_end_states + partner * KV + column);
        if (d.delta_rule) copy_rows.start(buffer_rows(b), d_written + partner * CV + column);
      },
      [&](Stage k, int b) {
        const int column = k.inner * St::kColumns;
        const bool moves_on = list.partner[k.outer] >= 0;
        const TState* x = buffer_x(b);
        if (reads_block) {
          if (k.inner == 0) clear(block);
          multiply_accumulate_transposed(block, d_inter + corner.x * inter_ld + column, inter_ld,
                                         x + corner.y * ld, ld, St::kColumns);
          if (k.inner == per_slot - 1) take_reads(list.slot[k.outer]);
        } else if (d_w_block && moves_on) {
          multiply_accumulate_transposed(block, buffer_rows(b) + corner.x * ld, ld, x + corner.y * ld, ld,
                                         St::kColumns);
        }
        if (!moves_on) return;
        if constexpr (!kDecayFromTrace) {
          for (int row = warp; row < K; row += kWarps)  // a lane per column of the stage
#pragma unroll
            for (int c = lane; c < St::kColumns; c += 32)
              decay_grad += x[row * ld + c] * buffer_g(b)[row * ld + c];
        }
        if (gram_block) {
          multiply_accumulate_transposed(gram, x + gram_corner.x * ld, ld, buffer_g(b) + gram_corner.y * ld,
                                         ld, St::kColumns);
        }
      });
  // dK̃'s carry term: W, Σ_s X_s Ḡ_sᵀ and the write kernel's T Σ_r L_r G_rᵀ to float32 rows over the buffers
  // the stages are done with, while the other outputs are written.
  float* w_rows = shared;  // W [C, k_ld]
  const int sum_ld = d.sum_ld();
  float* gram_rows = shared + C * k_ld;         // [K, sum_ld]
  float* landed_rows = gram_rows + K * sum_ld;  // [C, sum_ld]
  if (d.delta_rule) {
    copy_rows_async<kThreads>(w_rows, k_ld, a.w + chunk * CK, C, K);
    copy_rows_async<kThreads>(landed_rows, sum_ld, a.d_k_to_end + chunk * CK, C, K);
    commit_copies();
    if (gram_block) store(gram, gram_rows + gram_corner.x * sum_ld + gram_corner.y, sum_ld, 1.f);
  }
  if (kDecayFromTrace && diagonal_block) decay_grad = diagonal_sum(gram);
  decay_grad = warp_sum(decay_grad);
  if (lane == 0) warp_sums[warp] = decay_grad;
  __syncthreads();  // every warp's dq̃ block, dots and decay sum are in
  if (threadIdx.x == 0) {
    float sum = 0.f;
    for (int w = 0; w < kWarps; ++w)
      sum += warp_sums[w];
    a.d_chunk_decay[chunk] = sum;
  }
  for (int row = warp; row < C; row += kWarps)
    for (int column = 4 * lane; column < K; column += 4 * 32)
      *reinterpret_cast<float4*>(a.d_transported_q + chunk * CK + row * K + column) =
          *reinterpret_cast<const float4*>(d_q + row * k_ld + column);
  for (int e = threadIdx.x; e < C * S; e += kThreads) {
    float sum = 0.f;
    for (int key_block = 0; key_block < K / kBlock; ++key_block)
      sum += dots[key_block * C * S + e];
    a.d_read_weight[chunk * C * S + e] = sum;
  }
  if (d_w_block) store(block, a.d_w + chunk * CK + corner.x * K + corner.y, K, -1.f);  // dW = −Σ_s dΔ̄_s X_sᵀ
  if (!d.delta_rule) return;

  // dK̃ = T Σ_r L_r G_rᵀ − W Σ_s X_s Ḡ_sᵀ (TF32), by the warps of P_s, which hold [C, K] blocks.
  wait_copies<0>();
  __syncthreads();
  if (reads_block) {
    load(block, landed_rows + corner.x * sum_ld + corner.y, sum_ld, -1.f);
    multiply_accumulate<Stored::by_row, false, Stored::by_column, false>(
        block, {w_rows + corner.x * k_ld, k_ld}, {gram_rows + corner.y, sum_ld}, K);
    store(block, a.d_k_to_end + chunk * CK + corner.x * K + corner.y, K, -1.f);
  }
}

/// block += A B with both operands of type T: on bf16 tensor cores for bf16 (compact states), else TF32.
template <Stored kA, bool kScaleA, Stored kB, bool kScaleB, class T>
__device__ void multiply(WarpBlock& block, const Operand<T>& a, const Operand<T>& b, int depth) {
  if constexpr (std::is_same_v<T, float>) {
    multiply_accumulate<kA, kScaleA, kB, kScaleB>(block, a, b, depth);
  } else {
    multiply_accumulate_bf16<kA, kScaleA, kB, kScaleB>(block, a, b, depth);
  }
}

/// Σ_r L_r G_rᵀ, dv and (delta rule) dT of one chunk; without the delta rule T is the identity. Stages: 32
/// value columns at a time, and for each the slots some token lands in, with G_r and dΔ_r. L_r = m_r ⊙ v is
/// never formed: the fragments of v scale by m_r as they load. The first warps hold Σ_r L_r G_rᵀ's blocks,
/// the next dT's, the last the current value columns of dv = Σ_r m_r ⊙ (Tᵀ dΔ_r), stored when the stage's
/// last slot is done.
template <class St>
__global__ void __launch_bounds__(kThreads, 1) write_gradients_kernel(SlotGradientArgs a, Dims d) {
  using TState = typename St::State;
  constexpr int kStageColumns = St::kColumns;
  extern __shared__ __align__(128) float shared[];
  __shared__ SlotList list;
  const int C = d.C, K = d.K, V = d.V, S = d.S;
  // v and T in the states' type: with bf16 states, the products run on bf16 tensor cores.
  constexpr bool kFloat = std::is_same_v<TState, float>;
  const int values_ld = d.value_ld<TState>(), square_ld = d.square_ld<TState>();
  auto* values = reinterpret_cast<TState*>(shared);  // v [C, values_ld]
  float* stage_buffers =
      shared + floats_of<TState>(C, values_ld);  // St::kBuffers × (G_r [K, ·], dΔ_r [C, ·])
  float* t_region = stage_buffers + St::kBuffers * d.stage_floats<St>();
  auto* t_inverse = reinterpret_cast<TState*>(t_region);       // T [C, square_ld]
  float* tokens = t_region + floats_of<TState>(C, square_ld);  // m [S, C]

  const size_t chunk = block_chunk(d);
  const size_t CK = static_cast<size_t>(C) * K, CV = static_cast<size_t>(C) * V,
               KV = static_cast<size_t>(K) * V, CC = static_cast<size_t>(C) * C;
  const int warp = warp_index();
  if constexpr (kFloat) {
    copy_rows_async<kThreads>(values, values_ld, a.source_v + chunk * CV, C, V);
    if (d.delta_rule) copy_rows_async<kThreads>(t_inverse, square_ld, a.t_inverse + chunk * CC, C, C);
  } else {
    load_as_bf16<kThreads>(values, values_ld, a.source_v + chunk * CV, C, V);
    if (d.delta_rule) load_as_bf16<kThreads>(t_inverse, square_ld, a.t_inverse + chunk * CC, C, C);
  }
  if (!d.delta_rule) {
    for (int e = threadIdx.x; e < C * C; e += kThreads)
      t_inverse[(e / C) * square_ld + e % C] = static_cast<TState>(e / C == e % C ? 1.f : 0.f);
  }
  load_floats(tokens, a.token_move + chunk * S * C, S * C);
  __syncthreads();
  list_slots(list, nullptr, tokens, S, C, ~0u);

  const int landed_end = d.landed_blocks(), square_end = landed_end + d.square_blocks();
  const bool landed_block = warp < landed_end, square_block = !landed_block && warp < square_end,
             value_block = !landed_block && !square_block && warp < d.write_kernel_blocks();
  const int2 corner = landed_block   ? block_corner(warp, K)
                      : square_block ? block_corner(warp - landed_end, C)
                                     : make_int2((warp - square_end) * kBlock, 0);
  WarpBlock block;
  clear(block);
  float* d_source_v = a.d_source_v + chunk * CV + corner.x * V;
  const int count = list.count;

  constexpr int g_ld = St::kLd;
  const StageCopy<kThreads, TState, kStageColumns, g_ld> copy_states(K, V), copy_rows(C, V);
  const auto* d_end_states = static_cast<const TState*>(a.d_end_states) + chunk * S * KV;
  const auto buffer_g = [&](int b) { return d.stage_states<St>(stage_buffers, b); };
  const auto* d_written = static_cast<const TState*>(a.d_written) + chunk * S * CV;
  const auto buffer_rows = [&](int b) { return d.stage_rows<St>(stage_buffers, b); };
  run_stages<St::kBuffers>(
      V / kStageColumns, count,
      [&](Stage k, int b) {  // k: (the stage of value columns, the slot's place in the list)
        const int r = list.slot[k.inner], column = k.outer * kStageColumns;
        copy_states.start(buffer_g(b), d_end_states + r * KV + column);
        copy_rows.start(buffer_rows(b), d_written + r * CV + column);
      },
      [&](Stage k, int b) {
        const int r = list.slot[k.inner], column = k.outer * kStageColumns;
        const float* m = tokens + r * C;
        if (landed_block) {
          multiply<Stored::by_row, true, Stored::by_row, false, TState>(
              block, {values + corner.x * values_ld + column, values_ld, m + corner.x},
              {buffer_g(b) + corner.y * g_ld, g_ld}, kStageColumns);
        } else if (square_block) {
          multiply<Stored::by_row, false, Stored::by_row, true, TState>(
              block, {buffer_rows(b) + corner.x * g_ld, g_ld},
              {values + corner.y * values_ld + column, values_ld, m + corner.y}, kStageColumns);
        } else if (value_block) {
          multiply<Stored::by_column, true, Stored::by_column, false, TState>(
              block, {t_inverse + corner.x, square_ld, m + corner.x}, {buffer_rows(b), g_ld}, C);
          if (k.inner == count - 1) {
            store(block, d_source_v + column, V, 1.f);
            clear(block);
          }
        }
      });
  // With the delta rule dK̃'s term T Σ_r L_r G_rᵀ (TF32): T and the sum to float32 rows over the buffers the
  // stages are done with, while the other outputs are written. The read and carry kernel subtracts
  // W Σ_s X_s Ḡ_sᵀ.
  float* d_k_to_end = a.d_k_to_end + chunk * CK + corner.x * K + corner.y;
  const int t_ld = C + kPad, landed_ld = d.sum_ld();
  float* t_rows = shared;                  // T [C, t_ld]
  float* landed_rows = shared + C * t_ld;  // [C, landed_ld]
  if (d.delta_rule) {
    copy_rows_async<kThreads>(t_rows, t_ld, a.t_inverse + chunk * CC, C, C);
    commit_copies();
    if (landed_block) store(block, landed_rows + corner.x * landed_ld + corner.y, landed_ld, 1.f);
  } else if (landed_block) {  // T = I: dK̃ = Σ_r L_r G_rᵀ
    store(block, d_k_to_end, K, 1.f);
  }
  if (square_block) store(block, a.d_t_inverse + chunk * CC + corner.x * C + corner.y, C, 1.f);
  if (value_block && count == 0) {
    for (int column = 0; column < V; column += kStageColumns)
      store(block, d_source_v + column, V, 1.f);
  }
  if (!d.delta_rule) return;
  wait_copies<0>();
  __syncthreads();
  if (landed_block) {
    clear(block);
    multiply_accumulate<Stored::by_row, false, Stored::by_column, false>(
        block, {t_rows + corner.x * t_ld, t_ld}, {landed_rows + corner.y, landed_ld}, C);
    store(block, d_k_to_end, K, 1.f);
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
  const auto tiled = [](int64_t x) { return x >= kBlock && x % kBlock == 0 && x <= 4096; };
  if (!tiled(dims.chunk_size) || !tiled(dims.key_dim) || dims.value_dim % 32 != 0 || dims.value_dim < 32 ||
      dims.value_dim > 4096 || dims.slots < 1 || dims.slots > kMaxSlots || dims.batch_heads < 1 ||
      dims.batch_heads > 65535 || dims.chunks < 1 || dims.chunks > (int64_t{1} << 30))
    return false;
  // Each warp takes one 32 × 32 block: of P_s or dW (reads), of Σ X_s Ḡ_sᵀ (carry), of the writes' outputs.
  const int64_t c_blocks = dims.chunk_size / kBlock, k_blocks = dims.key_dim / kBlock;
  if (2 * c_blocks * k_blocks > kWarps || k_blocks * k_blocks > kWarps) return false;
  const Dims d = dims_of(dims, /*delta_rule=*/true);  // the delta rule's buffers and tiles are the larger
  const int limit = usable_shared_bytes() / static_cast<int>(sizeof(float));
  const auto fits = [&](auto state) {
    using T = decltype(state);
    return d.read_carry_kernel_floats<ReadCarryStages<T>>() <= limit &&
           d.write_kernel_floats<WriteStages<T>>() <= limit;
  };
  return d.write_kernel_blocks() <= kWarps && fits(float{}) && fits(bf16{});
}

const char* slot_pass_gradients(const SlotGradientArgs& args, const SlotPassDims& dims, void* stream) {
  const Dims d = dims_of(dims, args.t_inverse != nullptr);
  const int64_t bh = dims.batch_heads;
  const int limit = usable_shared_bytes() / static_cast<int>(sizeof(float));
  // The wide stages where the values split into them and their buffers fit.
  const bool wide =
      d.V % WideReadCarryStages::kColumns == 0 && d.read_carry_kernel_floats<WideReadCarryStages>() <= limit;
  const auto run = [&](auto state) {
    using TState = decltype(state);
    constexpr bool kCompact = std::is_same_v<TState, bf16>;
    // The writes first: with the delta rule the read and carry kernel completes their term of dK̃.
    const char* error = launch(write_gradients_kernel<WriteStages<TState>>, args, d, bh,
                               d.write_kernel_floats<WriteStages<TState>>(), stream);
    if (error != nullptr) return error;
    return kCompact && wide ? launch(read_and_carry_gradients_kernel<WideReadCarryStages>, args, d, bh,
                                     d.read_carry_kernel_floats<WideReadCarryStages>(), stream)
                            : launch(read_and_carry_gradients_kernel<ReadCarryStages<TState>>, args, d, bh,
                                     d.read_carry_kernel_floats<ReadCarryStages<TState>>(), stream);
  };
  return args.compact_states ? run(bf16{}) : run(float{});
}

}  // namespace dla::memory::kernels
