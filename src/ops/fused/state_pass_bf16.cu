// CUDA kernels of the fused state pass for bf16 operands (dla/ops/fused.h): the recurrences of
// state_pass.cu with the state, or its gradient, in float32 registers and the products on bf16 tensor cores.
// One block of 4 warps per (batch·head, 64 value columns); each warp keeps its 32 × 32 blocks of the [K, 64]
// state in registers across all chunks (src/ops/warp_block.cuh), so a chunk's sequential work is two
// products and two barriers:
//   forward   v_new = u − w S             (C × 64, depth K; S rounded to bf16 in shared memory)
//             S ← decay S + k_to_endᵀ v_new (K × 64, depth C; v_new rounded to bf16)
//   backward  dv_new = d_intra + k_to_end dS
//             dS ← decay dS + q_readᵀ dO − wᵀ dv_new
// The chunk's [C, K] operands arrive by cp.async one chunk ahead into the other of two shared stages, and the
// float32 addends (u, d_intra) into registers one chunk ahead, so that nothing on a chunk's critical path
// waits on global memory. The operands are rounded as fla's Triton kernels round them; the state and the
// addends stay float32. The chunk-start states, v_new and their gradients leave in bf16 (as fla writes them),
// copied from the shared operands in whole sectors; the final state and its gradient in float32.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "../async_copy.cuh"
#include "../cuda_launch.cuh"
#include "../warp_block.cuh"
#include "kernels.h"

namespace dla::ops::fused::kernels {
namespace {

using dla::ops::kernels::commit_copies;
using dla::ops::kernels::copy_async;
using dla::ops::kernels::for_each_lane_pair;
using dla::ops::kernels::kBlock;
using dla::ops::kernels::launched;
using dla::ops::kernels::max_shared_bytes;
using dla::ops::kernels::Stored;
using dla::ops::kernels::wait_copies;
using dla::ops::kernels::WarpBlock;
using bf16 = __nv_bfloat16;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kPad = 8;    // bf16 rows are padded by 16 bytes: ldmatrix's eight rows on distinct banks
constexpr int kPiece = 8;  // bf16 entries per 16-byte copy
constexpr int kWide = 2 * kBlock, kNarrow = kBlock;  // value columns per block

/// Shared-memory layout in bytes for chunk length C, key dim K and Width value columns per block: two stages,
/// each kOperands [C, K] operands and, with kTile, a [C, Width] one (dO), then the state (or its gradient)
/// and the chunk's written values (or their gradient) as bf16 operands.
template <int C, int K, int Width, int kOperands, bool kTile>
struct Layout {
  static constexpr int kOperandLd = K + kPad;
  static constexpr int kTileLd = Width + kPad;
  static constexpr int kOperandBytes = C * kOperandLd * 2;
  static constexpr int kStageBytes = kOperands * kOperandBytes + (kTile ? C * kTileLd * 2 : 0);
  static constexpr int kState = 2 * kStageBytes;
  static constexpr int kWritten = kState + K * kTileLd * 2;
  static constexpr int kBytes = kWritten + C * kTileLd * 2;
  __host__ __device__ static constexpr int operand(int stage, int i) {
    return stage * kStageBytes + i * kOperandBytes;
  }
  __host__ __device__ static constexpr int tile(int stage) {
    return stage * kStageBytes + kOperands * kOperandBytes;
  }
};

template <int C, int K, int Width>
using ForwardLayout = Layout<C, K, Width, 2, false>;  // w, k_to_end
template <int C, int K, int Width>
using BackwardLayout = Layout<C, K, Width, 3, true>;  // k_to_end, q_read, w; dO

/// The warp's blocks of the state (phase two: block warp + kWarps·s for s < kStateBlocks, where there is
/// one) and of the written values (phase one: one block for each of the last kWrittenBlocks warps, which at
/// K = 64 are those without a state block). Two warps per scheduler overlap each other's latencies: with one,
/// the kernel issued an instruction every five cycles.
template <int C, int K, int Width>
struct Blocks {
  static constexpr int kAcross = Width / kBlock;
  static constexpr int kWrittenBlocks = (C / kBlock) * kAcross;
  static constexpr int kStateTotal = (K / kBlock) * kAcross;
  static constexpr int kStateBlocks = (kStateTotal + kWarps - 1) / kWarps;
  static_assert(kWrittenBlocks <= kWarps);
  __device__ static int2 origin(int index) {
    return {(index / kAcross) * kBlock, (index % kAcross) * kBlock};
  }
  __device__ static bool has_state(int warp, int s) { return warp + kWarps * s < kStateTotal; }
  /// The warp's written block, negative for none.
  __device__ static int written_index(int warp) { return warp - (kWarps - kWrittenBlocks); }
};

/// Where a warp's blocks (Blocks) start: as offsets into a [K, V] or [C, V] matrix of the block's head and
/// chunk, as the first value columns (for the edge check), and as the row and the column within the block's
/// value columns (for the shared operands).
template <int C, int K, int Width>
struct WarpPlace {
  using W = Blocks<C, K, Width>;
  int warp;
  bool writes;
  int written_offset, written_column, written_row, written_in_tile;
  int state_offset[W::kStateBlocks], state_column[W::kStateBlocks], state_row[W::kStateBlocks],
      state_in_tile[W::kStateBlocks];

  __device__ WarpPlace(int V, int first_column) : warp(static_cast<int>(threadIdx.x / 32)) {
    writes = W::written_index(warp) >= 0;
    const int2 w = W::origin(max(W::written_index(warp), 0));
    written_offset = w.x * V + first_column + w.y;
    written_column = first_column + w.y;
    written_row = w.x;
    written_in_tile = w.y;
#pragma unroll
    for (int s = 0; s < W::kStateBlocks; ++s) {
      const int2 o = W::origin(warp + kWarps * s);
      state_offset[s] = o.x * V + first_column + o.y;
      state_column[s] = first_column + o.y;
      state_row[s] = o.x;
      state_in_tile[s] = o.y;
    }
  }

  /// Calls f(s) for each state block s the warp holds.
  template <class F>
  __device__ void for_each_state_block(F f) const {
#pragma unroll
    for (int s = 0; s < W::kStateBlocks; ++s) {
      if (W::has_state(warp, s)) f(s);
    }
  }
};

/// Starts dst (rows Ld apart) = the [C, K] bf16 matrix at src (contiguous).
template <int C, int K, int Ld>
__device__ void copy_operand(bf16* dst, const bf16* src) {
  constexpr int kPerRow = K / kPiece;
  for (int i = threadIdx.x; i < C * kPerRow; i += kThreads) {
    const int row = i / kPerRow, column = (i % kPerRow) * kPiece;
    copy_async(reinterpret_cast<float*>(dst + row * Ld + column),
               reinterpret_cast<const float*>(src + row * K + column));
  }
}

/// Starts dst (rows Ld apart) = the Width columns from first_column of a [C, V] bf16 matrix at src, zeros
/// from column V on (V a multiple of 8).
template <int C, int Width, int Ld>
__device__ void copy_tile(bf16* dst, const bf16* src, int V, int first_column) {
  constexpr int kPerRow = Width / kPiece;
  for (int i = threadIdx.x; i < C * kPerRow; i += kThreads) {
    const int row = i / kPerRow, column = (i % kPerRow) * kPiece;
    const bool inside = first_column + column < V;
    const bf16* from = src + static_cast<size_t>(row) * V + (inside ? first_column + column : 0);
    copy_async(reinterpret_cast<float*>(dst + row * Ld + column), reinterpret_cast<const float*>(from),
               inside);
  }
}

/// The Width columns from first_column of the first `Rows` rows of a [*, V] bf16 global matrix at dst = the
/// shared tile at src (rows Ld apart), the columns from V on left out: 16 bytes at a time by the block's
/// first `threads` threads, so that each store fills whole sectors.
template <int Rows, int Width, int Ld>
__device__ void store_tile(bf16* dst, const bf16* src, int V, int first_column, int threads) {
  constexpr int kPerRow = Width / kPiece;
  for (int i = threadIdx.x; i < Rows * kPerRow; i += threads) {
    const int row = i / kPerRow, column = (i % kPerRow) * kPiece;
    if (first_column + column < V) {
      *reinterpret_cast<uint4*>(dst + static_cast<size_t>(row) * V + first_column + column) =
          *reinterpret_cast<const uint4*>(src + row * Ld + column);
    }
  }
}

/// block = scale · the 32 × 32 block at `origin` of a float32 global matrix with rows V apart, whose first
/// column is column `column` of V: zeros from column V on.
__device__ void load_global(WarpBlock& block, const float* __restrict__ origin, int V, int column,
                            float scale) {
  for_each_lane_pair([&](int m, int n, int h, int r, int c) {
    float2 x = make_float2(0.f, 0.f);
    if (column + c < V) x = __ldg(reinterpret_cast<const float2*>(origin + r * V + c));
    block.c[m][n][2 * h] = scale * x.x;
    block.c[m][n][2 * h + 1] = scale * x.y;
  });
}

/// The 32 × 32 block at `origin` of a float32 global matrix (as load_global's) = scale · block, the columns
/// from V on left out.
__device__ void store_global(const WarpBlock& block, float* origin, int V, int column, float scale) {
  for_each_lane_pair([&](int m, int n, int h, int r, int c) {
    if (column + c < V)
      *reinterpret_cast<float2*>(origin + r * V + c) =
          make_float2(scale * block.c[m][n][2 * h], scale * block.c[m][n][2 * h + 1]);
  });
}

/// dst (rows ld apart, from the block's origin) = scale · block, rounded to bf16.
__device__ void store_shared(const WarpBlock& block, bf16* dst, int ld, float scale) {
  for_each_lane_pair([&](int m, int n, int h, int r, int c) {
    *reinterpret_cast<__nv_bfloat162*>(dst + r * ld + c) =
        __floats2bfloat162_rn(scale * block.c[m][n][2 * h], scale * block.c[m][n][2 * h + 1]);
  });
}

__device__ void scale_block(WarpBlock& block, float scale) {
  for_each_lane_pair([&](int m, int n, int h, int, int) {
    block.c[m][n][2 * h] *= scale;
    block.c[m][n][2 * h + 1] *= scale;
  });
}

/// block += A B with A's rows and B's columns as the Operands give them, over `depth`.
template <Stored kA, Stored kB>
__device__ void accumulate(WarpBlock& block, const bf16* a, int a_ld, const bf16* b, int b_ld, int depth) {
  dla::ops::kernels::multiply_accumulate_bf16<kA, false, kB, false>(block, {a, a_ld}, {b, b_ld}, depth);
}

/// What both kernels work out first: the block's value columns and head, the strides of one chunk's [C, K],
/// [C, V] and [K, V] matrices, and the threads of the warps without a written block, which store the
/// chunk-start states and the written values (or their gradients) from the shared operands.
template <int C, int K, int Width>
struct Frame {
  static constexpr int kCopyThreads = 32 * (kWarps - Blocks<C, K, Width>::kWrittenBlocks);
  int V, first_column;
  size_t head, CK, CV, KV;
  __device__ explicit Frame(int value_dim)
      : V(value_dim),
        first_column(static_cast<int>(blockIdx.x) * Width),
        head(blockIdx.y),
        CK(static_cast<size_t>(C) * K),
        CV(static_cast<size_t>(C) * value_dim),
        KV(static_cast<size_t>(K) * value_dim) {}
};

struct ForwardArgs {
  const bf16 *k_to_end, *w;  // w null without the delta rule
  const float *u, *chunk_decay, *initial_state;
  bf16 *states, *v_new;
  float* final_state;
  int chunks, value_dim;
};

template <int C, int K, int Width>
__global__ void __launch_bounds__(kThreads) state_pass_forward_bf16_kernel(ForwardArgs a) {
  using L = ForwardLayout<C, K, Width>;
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  const auto at = [&](int offset) { return reinterpret_cast<bf16*>(shared + offset); };
  bf16* state_operand = at(L::kState);
  bf16* written_operand = at(L::kWritten);
  const Frame<C, K, Width> f(a.value_dim);
  const auto [V, first_column, head, CK, CV, KV] = f;
  constexpr int kCopyThreads = Frame<C, K, Width>::kCopyThreads;
  const bool delta_rule = a.w != nullptr;
  const WarpPlace<C, K, Width> p(V, first_column);

  WarpBlock state[Blocks<C, K, Width>::kStateBlocks];
  p.for_each_state_block([&](int s) {
    load_global(state[s], a.initial_state + head * KV + p.state_offset[s], V, p.state_column[s], 1.f);
  });
  const auto fetch = [&](int stage, size_t chunk) {
    if (delta_rule) copy_operand<C, K, L::kOperandLd>(at(L::operand(stage, 0)), a.w + chunk * CK);
    copy_operand<C, K, L::kOperandLd>(at(L::operand(stage, 1)), a.k_to_end + chunk * CK);
    commit_copies();
  };
  // The written block starts as −u, so that the product adds w S and v_new leaves as its negation.
  WarpBlock written;
  const auto fetch_values = [&](size_t chunk) {
    load_global(written, a.u + chunk * CV + p.written_offset, V, p.written_column, delta_rule ? -1.f : 1.f);
  };
  const size_t first_chunk = head * a.chunks;
  fetch(0, first_chunk);
  if (p.writes) fetch_values(first_chunk);
  float decay = __ldg(a.chunk_decay + first_chunk);
  for (int m = 0; m < a.chunks; ++m) {
    const size_t chunk = first_chunk + m;
    const int stage = m % 2;
    p.for_each_state_block([&](int s) {
      store_shared(state[s], state_operand + p.state_row[s] * L::kTileLd + p.state_in_tile[s], L::kTileLd,
                   1.f);
    });
    wait_copies<0>();
    __syncthreads();  // the chunk's operands and S are in; every warp is done with the other stage
    if (m + 1 < a.chunks) fetch(1 - stage, chunk + 1);
    if (p.writes) {
      if (delta_rule) {
        accumulate<Stored::by_row, Stored::by_column>(
            written, at(L::operand(stage, 0)) + p.written_row * L::kOperandLd, L::kOperandLd,
            state_operand + p.written_in_tile, L::kTileLd, K);
      }
      store_shared(written, written_operand + p.written_row * L::kTileLd + p.written_in_tile, L::kTileLd,
                   delta_rule ? -1.f : 1.f);
      if (m + 1 < a.chunks) fetch_values(chunk + 1);
    } else {
      store_tile<K, Width, L::kTileLd>(a.states + chunk * KV, state_operand, V, first_column, kCopyThreads);
    }
    const float next_decay = m + 1 < a.chunks ? __ldg(a.chunk_decay + chunk + 1) : 0.f;
    __syncthreads();  // v_new is in
    p.for_each_state_block([&](int s) {
      scale_block(state[s], decay);
      accumulate<Stored::by_column, Stored::by_column>(state[s], at(L::operand(stage, 1)) + p.state_row[s],
                                                       L::kOperandLd, written_operand + p.state_in_tile[s],
                                                       L::kTileLd, C);
    });
    if (!p.writes)
      store_tile<C, Width, L::kTileLd>(a.v_new + chunk * CV, written_operand, V, first_column, kCopyThreads);
    decay = next_decay;
  }
  p.for_each_state_block([&](int s) {
    store_global(state[s], a.final_state + head * KV + p.state_offset[s], V, p.state_column[s], 1.f);
  });
}

struct BackwardArgs {
  const bf16 *q_read, *d_out, *k_to_end, *w;  // w null without the delta rule
  const float *d_v_new_intra, *chunk_decay, *d_final_state;
  bf16 *d_states_next, *d_v_new;
  float* d_initial_state;
  int chunks, value_dim;
};

template <int C, int K, int Width>
__global__ void __launch_bounds__(kThreads) state_pass_backward_bf16_kernel(BackwardArgs a) {
  using L = BackwardLayout<C, K, Width>;
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  const auto at = [&](int offset) { return reinterpret_cast<bf16*>(shared + offset); };
  bf16* d_state_operand = at(L::kState);
  bf16* d_written_operand = at(L::kWritten);
  const Frame<C, K, Width> f(a.value_dim);
  const auto [V, first_column, head, CK, CV, KV] = f;
  constexpr int kCopyThreads = Frame<C, K, Width>::kCopyThreads;
  const bool delta_rule = a.w != nullptr;
  const WarpPlace<C, K, Width> p(V, first_column);

  WarpBlock d_state[Blocks<C, K, Width>::kStateBlocks];
  p.for_each_state_block([&](int s) {
    load_global(d_state[s], a.d_final_state + head * KV + p.state_offset[s], V, p.state_column[s], 1.f);
  });
  const auto fetch = [&](int stage, size_t chunk) {
    copy_operand<C, K, L::kOperandLd>(at(L::operand(stage, 0)), a.k_to_end + chunk * CK);
    copy_operand<C, K, L::kOperandLd>(at(L::operand(stage, 1)), a.q_read + chunk * CK);
    if (delta_rule) copy_operand<C, K, L::kOperandLd>(at(L::operand(stage, 2)), a.w + chunk * CK);
    copy_tile<C, Width, L::kTileLd>(at(L::tile(stage)), a.d_out + chunk * CV, V, first_column);
    commit_copies();
  };
  WarpBlock d_written;
  const auto fetch_values = [&](size_t chunk) {
    load_global(d_written, a.d_v_new_intra + chunk * CV + p.written_offset, V, p.written_column, 1.f);
  };
  const size_t last_chunk = head * a.chunks + a.chunks - 1;
  fetch(0, last_chunk);
  if (p.writes) fetch_values(last_chunk);
  float decay = __ldg(a.chunk_decay + last_chunk);
  for (int i = 0; i < a.chunks; ++i) {
    const size_t chunk = last_chunk - i;
    const int stage = i % 2;
    const bool more = i + 1 < a.chunks;
    p.for_each_state_block([&](int s) {
      store_shared(d_state[s], d_state_operand + p.state_row[s] * L::kTileLd + p.state_in_tile[s], L::kTileLd,
                   1.f);
    });
    wait_copies<0>();
    __syncthreads();  // the chunk's operands and dS_{m+1} are in; every warp is done with the other stage
    if (more) fetch(1 - stage, chunk - 1);
    if (p.writes) {
      accumulate<Stored::by_row, Stored::by_column>(
          d_written, at(L::operand(stage, 0)) + p.written_row * L::kOperandLd, L::kOperandLd,
          d_state_operand + p.written_in_tile, L::kTileLd, K);
      store_shared(d_written, d_written_operand + p.written_row * L::kTileLd + p.written_in_tile, L::kTileLd,
                   1.f);
      if (more) fetch_values(chunk - 1);
    } else {
      store_tile<K, Width, L::kTileLd>(a.d_states_next + chunk * KV, d_state_operand, V, first_column,
                                       kCopyThreads);
    }
    const float next_decay = more ? __ldg(a.chunk_decay + chunk - 1) : 0.f;
    __syncthreads();  // dv_new is in
    // dS_m = decay dS_{m+1} + q̂ᵀ dO − Wᵀ dv_new, as −(−decay dS_{m+1} + Wᵀ dv_new) + q̂ᵀ dO: dv_new enters
    // the product as it was stored.
    p.for_each_state_block([&](int s) {
      if (delta_rule) {
        scale_block(d_state[s], -decay);
        accumulate<Stored::by_column, Stored::by_column>(
            d_state[s], at(L::operand(stage, 2)) + p.state_row[s], L::kOperandLd,
            d_written_operand + p.state_in_tile[s], L::kTileLd, C);
        scale_block(d_state[s], -1.f);
      } else {
        scale_block(d_state[s], decay);
      }
      accumulate<Stored::by_column, Stored::by_column>(d_state[s], at(L::operand(stage, 1)) + p.state_row[s],
                                                       L::kOperandLd, at(L::tile(stage)) + p.state_in_tile[s],
                                                       L::kTileLd, C);
    });
    if (!p.writes) {
      store_tile<C, Width, L::kTileLd>(a.d_v_new + chunk * CV, d_written_operand, V, first_column,
                                       kCopyThreads);
    }
    decay = next_decay;
  }
  p.for_each_state_block([&](int s) {
    store_global(d_state[s], a.d_initial_state + head * KV + p.state_offset[s], V, p.state_column[s], 1.f);
  });
}

/// Calls f.template operator()<C, K>() for the instantiated (C, K) of dims; false when there is none.
template <class F>
bool with_shape(const StatePassDims& d, F&& f) {
  const auto one = [&]<int C, int K>() {
    if (d.chunk_size != C || d.key_dim != K) return false;
    f.template operator()<C, K>();
    return true;
  };
  return one.template operator()<64, 128>() || one.template operator()<64, 64>() ||
         one.template operator()<32, 128>() || one.template operator()<32, 64>();
}

/// Value columns per block: 64, or 32 where blocks of 64 would leave most SMs idle (few heads, long
/// sequences), since a block's chunk step is bound by its SM's shared-memory and load-store traffic rather
/// than by the operands it shares with the other blocks of its head.
bool narrow_blocks(const StatePassDims& d) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return false;
  return d.batch_heads * ((d.value_dim + kBlock - 1) / kBlock) <= sms;
}

template <int Width, class Kernel, class Args>
const char* launch(Kernel kernel, const Args& args, int bytes, const StatePassDims& d, void* stream) {
  const cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (error != cudaSuccess) return cudaGetErrorString(error);
  const dim3 grid(static_cast<unsigned>((d.value_dim + Width - 1) / Width),
                  static_cast<unsigned>(d.batch_heads));
  kernel<<<grid, kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(args);
  return launched();
}

}  // namespace

bool supports_bf16_state_pass(const StatePassDims& d) {
  if (d.chunks < 1 || d.chunks > (int64_t{1} << 30) || d.value_dim < 1 || d.value_dim % kPiece != 0 ||
      d.value_dim > (int64_t{1} << 20) || d.batch_heads < 1 || d.batch_heads > 65535)
    return false;
  bool fits = false;
  const bool instantiated = with_shape(d, [&]<int C, int K>() {
    fits = std::max(ForwardLayout<C, K, kWide>::kBytes, BackwardLayout<C, K, kWide>::kBytes) <=
           max_shared_bytes();
  });
  return instantiated && fits;
}

const char* state_pass_forward_bf16(const void* k_to_end, const float* u, const void* w,
                                    const float* chunk_decay, const float* initial_state, void* states,
                                    void* v_new, float* final_state, const StatePassDims& dims,
                                    void* stream) {
  const ForwardArgs args{static_cast<const bf16*>(k_to_end),
                         static_cast<const bf16*>(w),
                         u,
                         chunk_decay,
                         initial_state,
                         static_cast<bf16*>(states),
                         static_cast<bf16*>(v_new),
                         final_state,
                         static_cast<int>(dims.chunks),
                         static_cast<int>(dims.value_dim)};
  const char* error = "state_pass_forward_bf16: no kernel for this chunk length and key dim";
  with_shape(dims, [&]<int C, int K>() {
    error = narrow_blocks(dims) ? launch<kNarrow>(state_pass_forward_bf16_kernel<C, K, kNarrow>, args,
                                                  ForwardLayout<C, K, kNarrow>::kBytes, dims, stream)
                                : launch<kWide>(state_pass_forward_bf16_kernel<C, K, kWide>, args,
                                                ForwardLayout<C, K, kWide>::kBytes, dims, stream);
  });
  return error;
}

const char* state_pass_backward_bf16(const void* q_read, const void* d_out, const float* d_v_new_intra,
                                     const void* k_to_end, const void* w, const float* chunk_decay,
                                     const float* d_final_state, void* d_states_next, void* d_v_new,
                                     float* d_initial_state, const StatePassDims& dims, void* stream) {
  const BackwardArgs args{static_cast<const bf16*>(q_read),
                          static_cast<const bf16*>(d_out),
                          static_cast<const bf16*>(k_to_end),
                          static_cast<const bf16*>(w),
                          d_v_new_intra,
                          chunk_decay,
                          d_final_state,
                          static_cast<bf16*>(d_states_next),
                          static_cast<bf16*>(d_v_new),
                          d_initial_state,
                          static_cast<int>(dims.chunks),
                          static_cast<int>(dims.value_dim)};
  const char* error = "state_pass_backward_bf16: no kernel for this chunk length and key dim";
  with_shape(dims, [&]<int C, int K>() {
    error = narrow_blocks(dims) ? launch<kNarrow>(state_pass_backward_bf16_kernel<C, K, kNarrow>, args,
                                                  BackwardLayout<C, K, kNarrow>::kBytes, dims, stream)
                                : launch<kWide>(state_pass_backward_bf16_kernel<C, K, kWide>, args,
                                                BackwardLayout<C, K, kWide>::kBytes, dims, stream);
  });
  return error;
}

}  // namespace dla::ops::fused::kernels
