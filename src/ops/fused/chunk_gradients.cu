// CUDA kernels of the fused op's backward around the state pass (dla/ops/fused.h), one thread block per
// (chunk, batch·head) as in chunk_stages.cu, products on TF32 tensor cores (chunk_tiles.cuh):
//   chunk_value_gradient  before the state pass backward: Δ's gradient from the chunk's own outputs,
//                         scale · ((q kᵀ) ⊙ D)ᵀ dO, and the pass's operands q̂ = scale · exp(γ) ⊙ q and dO
//                         as float32 chunks
//   chunk_gradients       after it: dq, dk, dv, dg and dβ of the chunk from dΔ and dS_next, every term of
//                         docs/ops/fused.md in one block, none of them through global memory
// chunk_gradients folds the row factors of the terms into the operands it accumulates, and uses
// W S = U − Δ: the WY part's dA = −(Tᵀ dW) Wᵀ − (Tᵀ dΔ) Uᵀ becomes −(Tᵀ dΔ) Δᵀ (dW = −dΔ Sᵀ), so neither
// W nor U is read.
#include <algorithm>
#include <utility>

#include "chunk_tiles.cuh"

namespace dla::ops::fused::kernels {
namespace {

using namespace tiles;
using dla::ops::kernels::max_shared_bytes;

// chunk_gradients keeps four C × K and C × C accumulators live across its products: two steps per unrolled
// iteration keep their operand loads from spilling.
constexpr int kUnroll = 2;
// chunk_gradients runs 16 warps per block: its phases wait on shared-memory rounds and barriers, and its
// accumulators, split over twice the warps, then fit the 128 registers a thread of a 512-thread block has.
constexpr int kGradientThreads = 512;
// One vector load in flight per thread and copy: a C-row tile is one row per thread at this block size, and
// more would spill next to the accumulators.
constexpr int kGradientInFlight = 1;
// The K × 32 tiles of S and dS_next take up to two rows per thread: both rows' loads in one round fit the
// registers (128 per thread at C = 64, K = 128, no spills).
constexpr int kStateRowsInFlight = 2;
constexpr int kValueTile = 32;                        // value columns per pass of chunk_gradients
constexpr int kValueLd = kValueTile + kPad;           // tiles read as A or column-major B
constexpr int kDVNewLd = kValueTile + kRowMajorBPad;  // dΔ, read as row-major B

/// f(i, Σ_c a[i·ALd + c] · b[i·BLd + c]) for every row i < Rows of two Rows × Cols blocks by a block of
/// Threads, called by one lane per warp with the warp's part of the sum (a row's parts add up over f's
/// calls).
template <int Threads, int Rows, int Cols, int ALd, int BLd, class F>
__device__ void for_each_row_dot(const float* a, const float* b, F f) {
  static_assert(Cols % 32 == 0 && Threads % Cols == 0);  // a warp's lanes share one row
  constexpr int kRowsPerPass = Threads / Cols;
  const int c = threadIdx.x % Cols;
  for (int i = threadIdx.x / Cols; i < Rows; i += kRowsPerPass) {
    const float part = warp_sum(a[i * ALd + c] * b[i * BLd + c]);
    if (threadIdx.x % 32 == 0) f(i, part);
  }
}

/// first[s] += A_first(row tile rows[s]) B and, unless a_second is null, second[s] += A_second(rows[s]) B,
/// over the depth steps j < depth (at most MaxDepth), for the Tiles tiles of a warp that share B's column
/// tile (rows[s] < 0: no tile): each B fragment is loaded once for all of them. A row-major with rows ALd
/// apart, B as for multiply.
template <class BLayout, int MaxDepth, int ALd, int BLd, int Tiles>
__device__ void multiply_sharing_b(Accumulator (&first)[Tiles], const float* a_first,
                                   Accumulator (&second)[Tiles], const float* a_second,
                                   const int (&rows)[Tiles], const float* b, int depth) {
  constexpr bool kRowMajor = std::is_same_v<BLayout, wmma::row_major>;
#pragma unroll kUnroll
  for (int j = 0; j < MaxDepth; j += kStep) {
    if (j >= depth) continue;
    OperandB<BLayout> b_fragment;
    load_shared(b_fragment, kRowMajor ? b + j * BLd : b + j, BLd);
#pragma unroll
    for (int s = 0; s < Tiles; ++s) {
      if (rows[s] < 0) continue;
      OperandA a_fragment;
      load_shared(a_fragment, a_first + rows[s] * kTile * ALd + j, ALd);
      wmma::mma_sync(first[s], a_fragment, b_fragment, first[s]);
      if (a_second == nullptr) continue;
      load_shared(a_fragment, a_second + rows[s] * kTile * ALd + j, ALd);
      wmma::mma_sync(second[s], a_fragment, b_fragment, second[s]);
    }
  }
}

/// The row at `token` (ChunkBlock::token) of a contiguous [B, T, H, D] output as Scalar.
template <class Scalar>
__device__ Scalar* output_row(void* out, size_t token, int dim) {
  return static_cast<Scalar*>(out) + token * dim;
}

// ---- chunk_value_gradient ----

/// Shared-memory layout of chunk_value_gradient, in floats: q and k as operands, Pᵀ, one 64-column tile of
/// dO, γ.
template <int C, int K>
struct ValueGradientLayout {
  static constexpr int kKeysLd = K + kPad;
  static constexpr int kSquareLd = C + kPad;
  static constexpr int kQueries = 0;
  static constexpr int kKeys = kQueries + C * kKeysLd;
  static constexpr int kPairs = kKeys + C * kKeysLd;
  static constexpr int kGrads = kPairs + C * kSquareLd;
  static constexpr int kGamma = kGrads + C * kColumnLd;
  static constexpr int kFloats = kGamma + C;
};

struct ValueGradientArgs {
  TokenRows q, k, d_out;
  const float* gamma;
  float *q_read, *d_out_chunks, *d_v_new_intra;
  float scale;
  int tokens, heads, value_dim;
};

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kThreads, 2) chunk_value_gradient_kernel(ValueGradientArgs a) {
  using L = ValueGradientLayout<C, K>;
  constexpr int kSquareTiles = C / kTile;
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  float* queries = shared + L::kQueries;
  float* keys = shared + L::kKeys;
  float* pairs_t = shared + L::kPairs;
  float* grads = shared + L::kGrads;
  float* gamma = shared + L::kGamma;
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);

  for (int i = threadIdx.x; i < C; i += kThreads)
    gamma[i] = a.gamma[block.chunk * C + i];
  __syncthreads();
  // q̂ leaves exact; q and k, loaded in one round, stay behind as TF32 operands.
  float* q_read = a.q_read + block.chunk * C * K;
  copy_row_pairs(ChunkRows<Scalar>(a.q, block), ChunkRows<Scalar>(a.k, block), C, K,
                 [&](int r, int c, RowPair x) {
                   store4(q_read + r * K + c, scaled(x.first, a.scale * expf(gamma[r])));
                   store4(queries + r * L::kKeysLd + c, tf32(x.first));
                   store4(keys + r * L::kKeysLd + c, tf32(x.second));
                 });
  __syncthreads();
  // Pᵀ: the tiles of q kᵀ on and below the diagonal, each stored transposed.
  for_each_tile(kSquareTiles, kSquareTiles, [&](int r, int c) {
    if (c > r) return;
    Accumulator acc;
    wmma::fill_fragment(acc, 0.f);
    multiply<wmma::col_major, K, L::kKeysLd, L::kKeysLd>(acc, queries + r * kTile * L::kKeysLd,
                                                         keys + c * kTile * L::kKeysLd);
    store_shared(pairs_t + c * kTile * L::kSquareLd + r * kTile, acc, L::kSquareLd, wmma::mem_col_major);
  });
  __syncthreads();
  for_each_entry(C, C, [&](int i, int j) {
    float& entry = pairs_t[i * L::kSquareLd + j];  // P_ji
    entry = i <= j ? wmma::__float_to_tf32(entry * expf(gamma[j] - gamma[i])) : 0.f;
  });
  __syncthreads();

  const ChunkRows<Scalar> d_out_rows(a.d_out, block);
  float* d_out_chunks = a.d_out_chunks + block.chunk * C * V;
  float* d_v_new_intra = a.d_v_new_intra + block.chunk * C * V;
  for (int first_column = 0; first_column < V; first_column += kColumnTile) {
    const int width = min(kColumnTile, V - first_column);
    copy_rows(
        C, width, [&](int r, int c) { return d_out_rows.load(r, first_column + c); },
        [&](int r, int c, float4 x) {
          store4(d_out_chunks + r * V + first_column + c, x);
          store4(grads + r * kColumnLd + c, tf32(x));
        });
    __syncthreads();
    // Row tile r of Pᵀ is zero left of its diagonal tile.
    for_each_tile_pair(kSquareTiles, width / kTile, [&](int r, int c) {
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      multiply<wmma::row_major, C, L::kSquareLd, kColumnLd>(acc, pairs_t + r * kTile * (L::kSquareLd + 1),
                                                            grads + r * kTile * kColumnLd + c * kTile,
                                                            C - r * kTile);
#pragma unroll
      for (int t = 0; t < acc.num_elements; ++t)
        acc.x[t] *= a.scale;
      wmma::store_matrix_sync(d_v_new_intra + r * kTile * V + first_column + c * kTile, acc, V,
                              wmma::mem_row_major);
    });
    __syncthreads();
  }
}

// ---- chunk_gradients ----

/// Shared-memory layout of chunk_gradients, in floats. k stays at the front throughout; the value-column
/// passes and the key-side stage after them share the region behind it; the per-row terms follow.
template <int C, int K>
struct GradientLayout {
  static constexpr int kKeysLd = K + kPad;
  static constexpr int kSquareLd = C + kPad;
  static constexpr int kKeys = 0;
  static constexpr int kRegion = kKeys + C * kKeysLd;
  // Value-column passes: Tᵀ, nine C-row tiles, and S and dS_next as K-row tiles.
  static constexpr int kInverseT = kRegion;
  static constexpr int kDOut = kInverseT + C * kSquareLd;          // dO
  static constexpr int kDOutRead = kDOut + C * kValueLd;           // scale exp(γ) ⊙ dO
  static constexpr int kVNew = kDOutRead + C * kValueLd;           // Δ
  static constexpr int kVNewToEnd = kVNew + C * kValueLd;          // exp(γ_last − γ) ⊙ Δ
  static constexpr int kDVNew = kVNewToEnd + C * kValueLd;         // dΔ
  static constexpr int kDVb = kDVNew + C * kDVNewLd;               // d(βV) = Tᵀ dΔ
  static constexpr int kDVbRead = kDVb + C * kValueLd;             // −β exp(γ) ⊙ d(βV)
  static constexpr int kKeysStates = kDVbRead + C * kValueLd;      // k S
  static constexpr int kKeysDStates = kKeysStates + C * kValueLd;  // k dS_next
  static constexpr int kStates = kKeysDStates + C * kValueLd;
  static constexpr int kDStates = kStates + K * kValueLd;
  static constexpr int kValuePassEnd = kDStates + K * kValueLd;
  // Key-side stage: q, one C × K scratch block and four C × C blocks.
  static constexpr int kQueries = kRegion;
  static constexpr int kScratch = kQueries + C * kKeysLd;
  static constexpr int kPairs = kScratch + C * kKeysLd;      // q kᵀ, then (dP ⊙ D)ᵀ
  static constexpr int kKeyPairs = kPairs + C * kSquareLd;   // k kᵀ, then dKK + dKKᵀ
  static constexpr int kDPairs = kKeyPairs + C * kSquareLd;  // dP, then dP ⊙ D
  static constexpr int kGram = kDPairs + C * kSquareLd;      // d(βV) Δᵀ, then dKK
  static constexpr int kKeyStageEnd = kGram + C * kSquareLd;
  // Per-row terms.
  static constexpr int kGamma = larger(kValuePassEnd, kKeyStageEnd);
  static constexpr int kBeta = kGamma + C;
  static constexpr int kExpGamma = kBeta + C;
  static constexpr int kToEnd = kExpGamma + C;
  static constexpr int kDGamma = kToEnd + C;
  static constexpr int kDBeta = kDGamma + C;
  static constexpr int kColumnSums = kDBeta + C;
  static constexpr int kTotals = kColumnSums + C;  // ⟨S, dS_next⟩, Σ_i ⟨dK̃_i, K̃_i⟩
  static constexpr int kFloats = kTotals + 4;
};

struct GradientArgs {
  TokenRows q, k, v;
  const float *beta, *gamma, *inverse, *states, *v_new, *d_out, *d_states_next, *d_v_new;
  void *d_q, *d_k, *d_v;
  float *d_g, *d_beta;
  float scale;
  int tokens, heads, value_dim;
};

/// A value of S with the same entry of dS_next.
struct StatePair {
  float4 state, d_state;
};

/// The same entries of dO, Δ and dΔ.
struct ValueRows {
  float4 d_out, v_new, d_v_new;
};

__device__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kGradientThreads, 1) chunk_gradients_kernel(GradientArgs a) {
  using L = GradientLayout<C, K>;
  constexpr int kSquareTiles = C / kTile, kKeyColumnTiles = K / kTile;
  constexpr int kWarpCount = kGradientThreads / 32;
  constexpr int kKeyTileCount = kSquareTiles * kKeyColumnTiles,
                kSquareTileCount = kSquareTiles * kSquareTiles;
  constexpr int kKeyTilesPerWarp = larger(1, kKeyTileCount / kWarpCount);
  static_assert(kKeyTileCount % kWarpCount == 0 || kKeyTileCount < kWarpCount);
  constexpr int kKeysLd = L::kKeysLd, kSquareLd = L::kSquareLd;
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  float* keys = shared + L::kKeys;
  float* gamma = shared + L::kGamma;
  float* beta = shared + L::kBeta;
  float* exp_gamma = shared + L::kExpGamma;
  float* to_end = shared + L::kToEnd;
  float* d_gamma = shared + L::kDGamma;
  float* d_beta = shared + L::kDBeta;
  float* column_sums = shared + L::kColumnSums;
  float* totals = shared + L::kTotals;
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);
  const bool delta_rule = a.beta != nullptr;
  const int warp = threadIdx.x / 32;

  for (int i = threadIdx.x; i < C; i += kGradientThreads) {
    gamma[i] = a.gamma[block.chunk * C + i];
    const size_t token = block.token(i);
    beta[i] = delta_rule && i < block.valid ? a.beta[token] : 0.f;
    d_gamma[i] = 0.f;
    d_beta[i] = 0.f;
    column_sums[i] = 0.f;
  }
  if (threadIdx.x < 4) totals[threadIdx.x] = 0.f;
  load_chunk<kGradientThreads>(keys, kKeysLd, ChunkRows<Scalar>(a.k, block), C, K, 0, nullptr, true);
  __syncthreads();
  for (int i = threadIdx.x; i < C; i += kGradientThreads) {
    exp_gamma[i] = expf(gamma[i]);
    to_end[i] = expf(gamma[C - 1] - gamma[i]);
  }

  // ---- value-column passes: every product whose depth is V ----
  float* inverse_t = shared + L::kInverseT;
  float* d_out = shared + L::kDOut;
  float* d_out_read = shared + L::kDOutRead;
  float* v_new = shared + L::kVNew;
  float* v_new_to_end = shared + L::kVNewToEnd;
  float* d_v_new = shared + L::kDVNew;
  float* d_vb = shared + L::kDVb;
  float* d_vb_read = shared + L::kDVbRead;
  float* keys_states = shared + L::kKeysStates;
  float* keys_d_states = shared + L::kKeysDStates;
  float* states = shared + L::kStates;
  float* d_states = shared + L::kDStates;
  if (delta_rule) {
    const float* inverse = a.inverse + block.chunk * C * C;
    copy_rows<kGradientThreads, kGradientInFlight>(
        C, C, [&](int r, int c) { return load4(inverse + r * C + c); },
        [&](int r, int c, float4 x) {
          inverse_t[c * kSquareLd + r] = wmma::__float_to_tf32(x.x);
          inverse_t[(c + 1) * kSquareLd + r] = wmma::__float_to_tf32(x.y);
          inverse_t[(c + 2) * kSquareLd + r] = wmma::__float_to_tf32(x.z);
          inverse_t[(c + 3) * kSquareLd + r] = wmma::__float_to_tf32(x.w);
        });
  }
  // Accumulated over the value columns, with their row factors folded into the left operands:
  //   d_q     dO Sᵀ · scale exp(γ) = dq̂ · scale exp(γ), q's gradient through the state read
  //   d_k     exp(γ_last − γ) ⊙ Δ dS_nextᵀ (dK̃'s share of dk) − β exp(γ) ⊙ d(βV) Sᵀ (w's operand's)
  //   d_pairs dO Δᵀ = dP / scale;   gram  d(βV) Δᵀ = −dA below the diagonal
  // The row dots γ and β need of the two dk terms come from k S and k dS_next instead:
  //   ⟨dK̃_i, K̃_i⟩ = exp(γ_last − γ_i) ⟨Δ_i, (k dS_next)_i⟩
  //   exp(γ_i) ⟨d(β exp(γ) K)_i, k_i⟩ = −exp(γ_i) ⟨d(βV)_i, (k S)_i⟩
  Accumulator d_q[kKeyTilesPerWarp], d_k[kKeyTilesPerWarp];
  Accumulator d_pairs[1], gram[1];
#pragma unroll
  for (int s = 0; s < kKeyTilesPerWarp; ++s) {
    wmma::fill_fragment(d_q[s], 0.f);
    wmma::fill_fragment(d_k[s], 0.f);
  }
  wmma::fill_fragment(d_pairs[0], 0.f);
  wmma::fill_fragment(gram[0], 0.f);
  const auto tile_of = [&](int s) { return warp + s * kWarpCount; };
  // A warp's key tiles share one column tile (the warp count is a multiple of the column tiles), and it has
  // at most one C × C tile: the products below load each B fragment once for all of them.
  static_assert(kWarpCount % kKeyColumnTiles == 0 && kSquareTileCount <= kWarpCount);
  const int key_column = warp % kKeyColumnTiles, square_column = warp % kSquareTiles;
  int key_rows[kKeyTilesPerWarp], square_rows[1];
#pragma unroll
  for (int s = 0; s < kKeyTilesPerWarp; ++s)
    key_rows[s] = tile_of(s) < kKeyTileCount ? tile_of(s) / kKeyColumnTiles : -1;
  square_rows[0] = warp < kSquareTileCount ? warp / kSquareTiles : -1;

  const ChunkRows<Scalar> v_rows(a.v, block);
  const float* d_out_chunk = a.d_out + block.chunk * C * V;
  const float* v_new_chunk = a.v_new + block.chunk * C * V;
  const float* d_v_new_chunk = a.d_v_new + block.chunk * C * V;
  const float* states_chunk = a.states + block.chunk * K * V;
  const float* d_states_chunk = a.d_states_next + block.chunk * K * V;
  float state_dot = 0.f, to_end_dot = 0.f;  // this thread's shares of the two totals
  for (int first_column = 0; first_column < V; first_column += kValueTile) {
    const int width = min(kValueTile, V - first_column);
    // One round of loads for the three C-row tiles.
    copy_rows<kGradientThreads, kGradientInFlight>(
        C, width,
        [&](int r, int c) {
          const int at = r * V + first_column + c;
          return ValueRows{load4(d_out_chunk + at), load4(v_new_chunk + at), load4(d_v_new_chunk + at)};
        },
        [&](int r, int c, ValueRows x) {
          store4(d_out + r * kValueLd + c, tf32(x.d_out));
          store4(d_out_read + r * kValueLd + c, tf32(scaled(x.d_out, a.scale * exp_gamma[r])));
          store4(v_new + r * kValueLd + c, tf32(x.v_new));
          store4(v_new_to_end + r * kValueLd + c, tf32(scaled(x.v_new, to_end[r])));
          if (delta_rule)
            store4(d_v_new + r * kDVNewLd + c, tf32(x.d_v_new));
          else if (r < block.valid)  // SSD: dV = dΔ
            store4(output_row<Scalar>(a.d_v, block.token(r), V) + first_column + c, x.d_v_new);
        });
    copy_rows<kGradientThreads, kStateRowsInFlight>(
        K, width,
        [&](int r, int c) {
          return StatePair{load4(states_chunk + r * V + first_column + c),
                           load4(d_states_chunk + r * V + first_column + c)};
        },
        [&](int r, int c, StatePair x) {
          state_dot += dot4(x.state, x.d_state);
          store4(states + r * kValueLd + c, tf32(x.state));
          store4(d_states + r * kValueLd + c, tf32(x.d_state));
        });
    __syncthreads();
    // [C, width] products, spread over the warps: k dS_next, and for the delta rule k S and d(βV) = Tᵀ dΔ
    // (row tile r of Tᵀ is zero left of its diagonal tile).
    for_each_tile<kGradientThreads>((delta_rule ? 3 : 1) * kSquareTiles, width / kTile, [&](int pr, int c) {
      const int product = pr / kSquareTiles, r = pr % kSquareTiles;
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      float* out = nullptr;
      if (product == 0) {
        multiply<wmma::row_major, K, kKeysLd, kValueLd, kUnroll>(acc, keys + r * kTile * kKeysLd,
                                                                 d_states + c * kTile);
        out = keys_d_states;
      } else if (product == 1) {
        multiply<wmma::row_major, K, kKeysLd, kValueLd, kUnroll>(acc, keys + r * kTile * kKeysLd,
                                                                 states + c * kTile);
        out = keys_states;
      } else {
        multiply<wmma::row_major, C, kSquareLd, kDVNewLd, kUnroll>(
            acc, inverse_t + r * kTile * (kSquareLd + 1), d_v_new + r * kTile * kDVNewLd + c * kTile,
            C - r * kTile);
        out = d_vb;
      }
      store_shared(out + r * kTile * kValueLd + c * kTile, acc, kValueLd);
    });
    multiply_sharing_b<wmma::col_major, kValueTile, kValueLd, kValueLd>(
        d_k, v_new_to_end, d_k, nullptr, key_rows, d_states + key_column * kTile * kValueLd, width);
    __syncthreads();
    // ⟨dK̃_i, K̃_i⟩ leaves γ_i and reaches γ_last. For the delta rule also dV = β ⊙ d(βV), dβ_i +=
    // ⟨d(βV)_i, v_i⟩ and the w operand's exp(γ_i) ⟨d(β exp(γ) K)_i, k_i⟩, which γ_i gets times β_i. A row's
    // lanes sum their parts first: one update per row, not one contended atomic per lane.
    for_each_row_vector<kGradientThreads, C>(width, [&](int r, int c, bool leader) {
      const int lanes = width / 4;
      const float end_dot =
          group_sum(dot4(*reinterpret_cast<const float4*>(v_new + r * kValueLd + c),
                         *reinterpret_cast<const float4*>(keys_d_states + r * kValueLd + c)),
                    lanes);
      float gamma_part = -to_end[r] * end_dot;
      if (leader) to_end_dot += to_end[r] * end_dot;
      if (delta_rule) {
        const float4 x = *reinterpret_cast<const float4*>(d_vb + r * kValueLd + c);
        float kb_dot = 0.f, beta_part = 0.f;
        if (r < block.valid) {
          store4(output_row<Scalar>(a.d_v, block.token(r), V) + first_column + c, scaled(x, beta[r]));
          kb_dot = -exp_gamma[r] * dot4(x, *reinterpret_cast<const float4*>(keys_states + r * kValueLd + c));
          beta_part = dot4(x, v_rows.load(r, first_column + c)) + kb_dot;
        }
        kb_dot = group_sum(kb_dot, lanes);
        beta_part = group_sum(beta_part, lanes);
        gamma_part += beta[r] * kb_dot;
        if (leader) d_beta[r] += beta_part;
        store4(d_vb_read + r * kValueLd + c, tf32(scaled(x, -beta[r] * exp_gamma[r])));
        store4(d_vb + r * kValueLd + c, tf32(x));
      }
      if (leader) d_gamma[r] += gamma_part;
    });
    __syncthreads();
    // The products that share S (dq̂'s and w's operand's) or Δ (dP's and the Gram term's) as B.
    multiply_sharing_b<wmma::col_major, kValueTile, kValueLd, kValueLd>(
        d_q, d_out_read, d_k, delta_rule ? d_vb_read : nullptr, key_rows,
        states + key_column * kTile * kValueLd, width);
    multiply_sharing_b<wmma::col_major, kValueTile, kValueLd, kValueLd>(
        d_pairs, d_out, gram, delta_rule ? d_vb : nullptr, square_rows,
        v_new + square_column * kTile * kValueLd, width);
    __syncthreads();
  }
  state_dot = warp_sum(state_dot);
  to_end_dot = warp_sum(to_end_dot);
  if (threadIdx.x % 32 == 0) {
    atomicAdd(totals, state_dot);
    atomicAdd(totals + 1, to_end_dot);
  }

  // ---- key-side stage ----
  float* queries = shared + L::kQueries;
  float* scratch = shared + L::kScratch;
  float* pairs = shared + L::kPairs;
  float* key_pairs = shared + L::kKeyPairs;
  float* d_pair_terms = shared + L::kDPairs;
  float* gram_terms = shared + L::kGram;
  load_chunk<kGradientThreads>(queries, kKeysLd, ChunkRows<Scalar>(a.q, block), C, K, 0, nullptr, true);
  const auto store_key_tiles = [&](float* dst, auto& acc) {
#pragma unroll
    for (int s = 0; s < kKeyTilesPerWarp; ++s) {
      if (tile_of(s) >= kKeyTileCount) continue;
      const int r = tile_of(s) / kKeyColumnTiles, c = tile_of(s) % kKeyColumnTiles;
      store_shared(dst + r * kTile * kKeysLd + c * kTile, acc[s], kKeysLd);
    }
  };
  store_key_tiles(scratch, d_q);
  if (square_rows[0] >= 0) {
    const int at = square_rows[0] * kTile * kSquareLd + square_column * kTile;
#pragma unroll
    for (int t = 0; t < d_pairs[0].num_elements; ++t)
      d_pairs[0].x[t] *= a.scale;
    store_shared(d_pair_terms + at, d_pairs[0], kSquareLd);
    if (delta_rule) store_shared(gram_terms + at, gram[0], kSquareLd);
  }
  __syncthreads();
  // q kᵀ and k kᵀ on and below the diagonal tiles; dγ_i += ⟨dq̂_i, q̂_i⟩.
  for_each_tile<kGradientThreads>(kSquareTiles, kSquareTiles, [&](int r, int c) {
    if (c > r) return;
    Accumulator acc;
    wmma::fill_fragment(acc, 0.f);
    multiply<wmma::col_major, K, kKeysLd, kKeysLd, kUnroll>(acc, queries + r * kTile * kKeysLd,
                                                            keys + c * kTile * kKeysLd);
    store_shared(pairs + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
    if (!delta_rule) return;
    wmma::fill_fragment(acc, 0.f);
    multiply<wmma::col_major, K, kKeysLd, kKeysLd, kUnroll>(acc, keys + r * kTile * kKeysLd,
                                                            keys + c * kTile * kKeysLd);
    store_shared(key_pairs + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
  });
  for_each_row_dot<kGradientThreads, C, K, kKeysLd, kKeysLd>(
      scratch, queries, [&](int i, float x) { atomicAdd(d_gamma + i, x); });
  __syncthreads();
  // The C × C terms, entry by entry; a warp's lanes share a row.
  {
    constexpr int kRowsPerPass = kGradientThreads / C;
    const int j = threadIdx.x % C;
    float column = 0.f;
    for (int i = threadIdx.x / C; i < C; i += kRowsPerPass) {
      const bool on_or_below = j <= i, below = j < i;
      const float decay = on_or_below ? expf(gamma[i] - gamma[j]) : 0.f;
      const float d_pair = d_pair_terms[i * kSquareLd + j];
      float pair_gradient = on_or_below ? d_pair * pairs[i * kSquareLd + j] * decay : 0.f;
      d_pair_terms[i * kSquareLd + j] = d_pair * decay;  // dP ⊙ D
      float beta_gradient = 0.f;
      if (delta_rule) {
        const float key_pair = below ? key_pairs[i * kSquareLd + j] * decay : 0.f;
        const float d_a = below ? -gram_terms[i * kSquareLd + j] : 0.f;
        pair_gradient += d_a * beta[i] * key_pair;
        beta_gradient = d_a * key_pair;
        gram_terms[i * kSquareLd + j] = beta[i] * d_a * decay;  // dKK
      }
      column += pair_gradient;
      const float row = warp_sum(pair_gradient), row_beta = warp_sum(beta_gradient);
      if (threadIdx.x % 32 == 0) {
        atomicAdd(d_gamma + i, row);
        if (delta_rule) atomicAdd(d_beta + i, row_beta);
      }
    }
    atomicAdd(column_sums + j, column);
  }
  __syncthreads();
  for_each_entry<kGradientThreads>(C, C, [&](int i, int j) {
    pairs[i * kSquareLd + j] = wmma::__float_to_tf32(d_pair_terms[j * kSquareLd + i]);
    if (delta_rule)
      key_pairs[i * kSquareLd + j] =
          wmma::__float_to_tf32(gram_terms[i * kSquareLd + j] + gram_terms[j * kSquareLd + i]);
  });
  for (int i = threadIdx.x; i < C; i += kGradientThreads)
    d_gamma[i] -= column_sums[i];
  __syncthreads();
  for_each_entry<kGradientThreads>(C, C, [&](int i, int j) {
    float& entry = d_pair_terms[i * kSquareLd + j];
    entry = wmma::__float_to_tf32(entry);
  });
  __syncthreads();

  // dq += (dP ⊙ D) k and dk += (dKK + dKKᵀ) k share k's column tile; (dP ⊙ D) is lower triangular, so row
  // tile r stops at its diagonal. Then dk += (dP ⊙ D)ᵀ q, whose row tile r starts at its diagonal.
#pragma unroll kUnroll
  for (int j = 0; j < C; j += kStep) {
    OperandB<wmma::row_major> b_fragment;
    load_shared(b_fragment, keys + j * kKeysLd + key_column * kTile, kKeysLd);
#pragma unroll
    for (int s = 0; s < kKeyTilesPerWarp; ++s) {
      const int r = key_rows[s];
      if (r < 0) continue;
      OperandA a_fragment;
      if (j < (r + 1) * kTile) {
        load_shared(a_fragment, d_pair_terms + r * kTile * kSquareLd + j, kSquareLd);
        wmma::mma_sync(d_q[s], a_fragment, b_fragment, d_q[s]);
      }
      if (delta_rule) {
        load_shared(a_fragment, key_pairs + r * kTile * kSquareLd + j, kSquareLd);
        wmma::mma_sync(d_k[s], a_fragment, b_fragment, d_k[s]);
      }
    }
  }
#pragma unroll
  for (int s = 0; s < kKeyTilesPerWarp; ++s) {
    const int r = key_rows[s];
    if (r < 0) continue;
    multiply<wmma::row_major, C, kSquareLd, kKeysLd, kUnroll>(
        d_k[s], pairs + r * kTile * (kSquareLd + 1), queries + r * kTile * kKeysLd + key_column * kTile,
        C - r * kTile);
  }
  store_key_tiles(scratch, d_q);
  __syncthreads();
  copy_rows<kGradientThreads, kGradientInFlight>(
      block.valid, K,
      [&](int r, int c) { return *reinterpret_cast<const float4*>(scratch + r * kKeysLd + c); },
      [&](int r, int c, float4 x) { store4(output_row<Scalar>(a.d_q, block.token(r), K) + c, x); });
  if (threadIdx.x == 0) d_gamma[C - 1] += totals[1] + expf(gamma[C - 1]) * totals[0];
  __syncthreads();
  store_key_tiles(scratch, d_k);
  reverse_cumsum_in_warp(d_gamma, C);
  __syncthreads();
  copy_rows<kGradientThreads, kGradientInFlight>(
      block.valid, K,
      [&](int r, int c) { return *reinterpret_cast<const float4*>(scratch + r * kKeysLd + c); },
      [&](int r, int c, float4 x) { store4(output_row<Scalar>(a.d_k, block.token(r), K) + c, x); });
  for (int i = threadIdx.x; i < block.valid; i += kGradientThreads) {
    const size_t token = block.token(i);
    a.d_g[token] = d_gamma[i];
    if (delta_rule) a.d_beta[token] = d_beta[i];
  }
}

// ---- launches ----

/// The (C, K) pairs the backward kernels are instantiated for: chunk_gradients keeps two C × K blocks in
/// registers, which K = 256 would spill, and its shared memory would not fit.
template <class F>
bool with_gradient_shape(const ChunkStageDims& d, F&& f) {
  return with_instantiated_shape<ChunkShape<64, 128>, ChunkShape<64, 64>, ChunkShape<32, 64>,
                                 ChunkShape<32, 128>>(d, std::forward<F>(f));
}

}  // namespace

bool supports_chunk_gradients(const ChunkStageDims& d) {
  if (!supports_chunk_stages(d)) return false;
  const size_t limit = static_cast<size_t>(std::max(max_shared_bytes(), 0));
  bool fits = false;
  const bool instantiated = with_gradient_shape(d, [&]<int C, int K>() {
    fits =
        sizeof(float) * std::max(ValueGradientLayout<C, K>::kFloats, GradientLayout<C, K>::kFloats) <= limit;
  });
  return instantiated && fits;
}

const char* chunk_value_gradient(const TokenRows& q, const TokenRows& k, const TokenRows& d_out,
                                 const float* gamma, double scale, float* q_read, float* d_out_chunks,
                                 float* d_v_new_intra, const ChunkStageDims& dims, void* stream) {
  const ValueGradientArgs args{q,
                               k,
                               d_out,
                               gamma,
                               q_read,
                               d_out_chunks,
                               d_v_new_intra,
                               static_cast<float>(scale),
                               static_cast<int>(dims.tokens),
                               static_cast<int>(dims.heads),
                               static_cast<int>(dims.value_dim)};
  const char* error = "chunk_value_gradient: no kernel for this chunk length and key dim";
  with_gradient_shape(dims, [&]<int C, int K>() {
    constexpr int kFloats = ValueGradientLayout<C, K>::kFloats;
    error = dims.bf16 ? launch(chunk_value_gradient_kernel<__nv_bfloat16, C, K>, args, kFloats, dims, stream)
                      : launch(chunk_value_gradient_kernel<float, C, K>, args, kFloats, dims, stream);
  });
  return error;
}

const char* chunk_gradients(const ChunkGradientBuffers& buffers, double scale, const ChunkStageDims& dims,
                            void* stream) {
  const GradientArgs args{buffers.q,
                          buffers.k,
                          buffers.v,
                          buffers.beta,
                          buffers.gamma,
                          buffers.inverse,
                          buffers.states,
                          buffers.v_new,
                          buffers.d_out,
                          buffers.d_states_next,
                          buffers.d_v_new,
                          buffers.d_q,
                          buffers.d_k,
                          buffers.d_v,
                          buffers.d_g,
                          buffers.d_beta,
                          static_cast<float>(scale),
                          static_cast<int>(dims.tokens),
                          static_cast<int>(dims.heads),
                          static_cast<int>(dims.value_dim)};
  const char* error = "chunk_gradients: no kernel for this chunk length and key dim";
  with_gradient_shape(dims, [&]<int C, int K>() {
    constexpr int kFloats = GradientLayout<C, K>::kFloats;
    error = dims.bf16
                ? launch<kGradientThreads>(chunk_gradients_kernel<__nv_bfloat16, C, K>, args, kFloats, dims,
                                           stream)
                : launch<kGradientThreads>(chunk_gradients_kernel<float, C, K>, args, kFloats, dims, stream);
  });
  return error;
}

}  // namespace dla::ops::fused::kernels
