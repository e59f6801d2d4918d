// CUDA kernels of the fused op's per-chunk stages (dla/ops/fused.h). One thread block per (chunk,
// batch·head) reads its chunk of the [B, T, H, ·] inputs in place, keeps it in shared memory and runs the
// chunk's products on TF32 tensor cores (the building blocks are in chunk_tiles.cuh):
//   chunk_prepare  γ = cumsum g, exp(γ_last), k ⊙ exp(γ_last − γ), and for the delta rule
//                  A = strict_lower(β_i (k kᵀ)_ij exp(γ_i − γ_j)), T = (I + A)⁻¹ (float32 FMAs),
//                  w = T (β exp(γ) ⊙ k), u = T (β ⊙ v); u = v for SSD
//   chunk_output   o = scale · [exp(γ) ⊙ q | (q kᵀ) ⊙ D] [S ; v_new], one product over the depth K + C
// so that none of the chunk terms between the inputs and what the state pass reads goes through global
// memory. The chunk length C and key dim K are template parameters (the instantiations are listed at
// supports_chunk_stages): fixed row lengths let the products unroll with constant shared-memory offsets.
#include <algorithm>
#include <utility>

#include "chunk_tiles.cuh"

namespace dla::ops::fused::kernels {
namespace {

using namespace tiles;
using dla::ops::kernels::max_shared_bytes;

// ---- per-block steps ----

/// t = (I + a)⁻¹ from the strictly lower part of a (C × C, rows Ld apart) in float32, blocked by 16. Each
/// diagonal block by forward substitution: column j of (I + A_dd)⁻¹ is t_ij = [i = j] − Σ_{j ≤ l < i} a_il
/// t_lj, so a column needs only itself, and four lanes of a warp share one. Then block row by block row,
/// T_rj = −T_rr Σ_{j ≤ k < r} A_rk T_kj for j < r, one entry of each block per thread. Ends synchronised.
template <int C, int Ld>
__device__ void unit_lower_inverse(const float* a, float* t) {
  static_assert(kThreads == kTile * kTile && C % kTile == 0 && C <= kThreads / 4);
  constexpr int kBlocks = C / kTile;
  {
    const int part = threadIdx.x % 4, column = (threadIdx.x / 4) % kTile, block = threadIdx.x / (4 * kTile);
    if (block < kBlocks) {  // whole warps: a warp covers eight columns of one block
      const int first = block * kTile, j = first + column;
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
        float sum = 0.f;
        for (int l = column + part; l < i; l += 4)
          sum += a[(first + i) * Ld + first + l] * t[(first + l) * Ld + j];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (part == 0) t[(first + i) * Ld + j] = (i == column ? 1.f : 0.f) - sum;
        __syncwarp();
      }
    }
  }
  const int i = threadIdx.x / kTile, c = threadIdx.x % kTile;
#pragma unroll
  for (int r = 0; r < kBlocks; ++r) {
#pragma unroll
    for (int j = r + 1; j < kBlocks; ++j)
      t[(r * kTile + i) * Ld + j * kTile + c] = 0.f;
  }
  __syncthreads();
#pragma unroll
  for (int r = 1; r < kBlocks; ++r) {
    const int row = r * kTile + i;
    float x[kBlocks];
#pragma unroll
    for (int j = 0; j < r; ++j) {
      float sum = 0.f;
#pragma unroll 8
      for (int l = j * kTile; l < r * kTile; ++l)
        sum += a[row * Ld + l] * t[l * Ld + j * kTile + c];
      x[j] = sum;
    }
#pragma unroll
    for (int j = 0; j < r; ++j)
      t[row * Ld + j * kTile + c] = x[j];
    __syncthreads();
#pragma unroll
    for (int j = 0; j < r; ++j) {
      float sum = 0.f;
#pragma unroll
      for (int m = 0; m < kTile; ++m)
        sum += t[row * Ld + r * kTile + m] * t[(r * kTile + m) * Ld + j * kTile + c];
      x[j] = -sum;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < r; ++j)
      t[row * Ld + j * kTile + c] = x[j];
    __syncthreads();
  }
}

// ---- chunk_prepare ----

/// Shared-memory layout of chunk_prepare, in floats. Every buffer the tensor cores read starts 32-byte
/// aligned: C is a multiple of 16 and the row lengths multiples of 4.
template <int C, int K>
struct PrepareLayout {
  static constexpr int kKeysLd = K + kPad;
  static constexpr int kSquareLd = C + kPad;
  static constexpr int kKeys = 0;                           // k, then TF32(k)
  static constexpr int kOperand = kKeys + C * kKeysLd;      // 64 columns of β exp(γ) ⊙ k or β ⊙ v
  static constexpr int kSquare = kOperand + C * kColumnLd;  // k kᵀ, then A
  static constexpr int kInverse = kSquare + C * kSquareLd;  // T
  static constexpr int kGamma = kInverse + C * kSquareLd;
  static constexpr int kBeta = kGamma + C;
  static constexpr int kRowScale = kBeta + C;
  static constexpr int kFloats = kRowScale + C;
};

struct PrepareArgs {
  TokenRows k, v;
  const float* g;
  const float* beta;  // null for SSD
  float *gamma, *k_to_end, *chunk_decay, *w, *inverse;
  const float* known_inverse;  // T read instead of formed (inverse is then null)
  float* u;
  PreparedCopies copies;
  int tokens, heads, value_dim;
};

/// T = (I + A)⁻¹ with A = strict_lower(β_i (k kᵀ)_ij exp(γ_i − γ_j)) from the keys (TF32 operands in
/// shared memory), into `inverse` as TF32 operands and to a.inverse (and its bf16 copy) exact; row_scale
/// becomes β exp(γ). The block's next barrier completes it.
template <int C, int K>
__device__ void form_inverse(const PrepareArgs& a, const ChunkBlock& block, const float* keys, float* square,
                             float* inverse, const float* beta, const float* gamma, float* row_scale) {
  using L = PrepareLayout<C, K>;
  // k kᵀ on and below the diagonal tiles: A keeps only the strictly lower part.
  constexpr int kSquareTiles = C / kTile;
  for_each_tile(kSquareTiles, kSquareTiles, [&](int r, int c) {
    if (c > r) return;
    Accumulator acc;
    wmma::fill_fragment(acc, 0.f);
    multiply<wmma::col_major, K, L::kKeysLd, L::kKeysLd>(acc, keys + r * kTile * L::kKeysLd,
                                                         keys + c * kTile * L::kKeysLd);
    store_shared(square + r * kTile * L::kSquareLd + c * kTile, acc, L::kSquareLd);
  });
  __syncthreads();
  for_each_entry(C, C, [&](int i, int j) {
    float& entry = square[i * L::kSquareLd + j];
    entry = j < i ? beta[i] * entry * expf(gamma[i] - gamma[j]) : 0.f;
  });
  for (int i = threadIdx.x; i < C; i += kThreads)
    row_scale[i] = beta[i] * expf(gamma[i]);
  __syncthreads();
  unit_lower_inverse<C, L::kSquareLd>(square, inverse);
  float* inverse_out = a.inverse + block.chunk * C * C;
  auto* inverse_copy = static_cast<__nv_bfloat16*>(a.copies.inverse);
  if (inverse_copy != nullptr) inverse_copy += block.chunk * C * C;
  copy_rows(
      C, C, [&](int r, int c) { return *reinterpret_cast<const float4*>(inverse + r * L::kSquareLd + c); },
      [&](int r, int c, float4 x) {
        store4(inverse_out + r * C + c, x);
        if (inverse_copy != nullptr) store4(inverse_copy + r * C + c, x);
        store4(inverse + r * L::kSquareLd + c, tf32(x));
      });
}

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kThreads, 2) chunk_prepare_kernel(PrepareArgs a) {
  using L = PrepareLayout<C, K>;
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  float* keys = shared + L::kKeys;
  float* operand = shared + L::kOperand;
  float* square = shared + L::kSquare;
  float* inverse = shared + L::kInverse;
  float* gamma = shared + L::kGamma;
  float* beta = shared + L::kBeta;
  float* row_scale = shared + L::kRowScale;
  constexpr int kSquareTiles = C / kTile;
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);
  const bool delta_rule = a.beta != nullptr;

  const ChunkRows<Scalar> k_rows(a.k, block);
  const ChunkRows<Scalar> v_rows(a.v, block);
  load_chunk(keys, L::kKeysLd, k_rows, C, K, 0, nullptr, false);
  for (int i = threadIdx.x; i < C; i += kThreads) {
    const size_t token = block.token(i);
    // Padding tokens decay by nothing and write nothing, as in the LibTorch path's zero-padded chunks.
    gamma[i] = i < block.valid ? a.g[token] : 0.f;
    beta[i] = delta_rule && i < block.valid ? a.beta[token] : 0.f;
  }
  __syncthreads();
  cumsum_in_warp(gamma, C);
  __syncthreads();
  const float gamma_last = gamma[C - 1];
  for (int i = threadIdx.x; i < C; i += kThreads) {
    a.gamma[block.chunk * C + i] = gamma[i];
    row_scale[i] = expf(gamma_last - gamma[i]);
  }
  if (threadIdx.x == 0) a.chunk_decay[block.chunk] = expf(gamma_last);
  __syncthreads();
  // k ⊙ exp(γ_last − γ) leaves exact; the keys stay behind as TF32 operands.
  float* k_to_end = a.k_to_end + block.chunk * C * K;
  auto* k_to_end_copy = static_cast<__nv_bfloat16*>(a.copies.k_to_end);
  if (k_to_end_copy != nullptr) k_to_end_copy += block.chunk * C * K;
  copy_rows(
      C, K, [&](int r, int c) { return *reinterpret_cast<const float4*>(keys + r * L::kKeysLd + c); },
      [&](int r, int c, float4 x) {
        const float4 to_end = scaled(x, row_scale[r]);
        store4(k_to_end + r * K + c, to_end);
        if (k_to_end_copy != nullptr) store4(k_to_end_copy + r * K + c, to_end);
        store4(keys + r * L::kKeysLd + c, tf32(x));
      });
  if (!delta_rule) {
    if (a.u == nullptr) return;
    float* u = a.u + block.chunk * C * V;
    copy_rows(
        C, V, [&](int r, int c) { return v_rows.load(r, c); },
        [&](int r, int c, float4 x) { store4(u + r * V + c, x); });
    return;
  }
  __syncthreads();

  if (a.known_inverse != nullptr) {
    for (int i = threadIdx.x; i < C; i += kThreads)
      row_scale[i] = beta[i] * expf(gamma[i]);
    copy_rows(
        C, C, [&](int r, int c) { return load4(a.known_inverse + block.chunk * C * C + r * C + c); },
        [&](int r, int c, float4 x) { store4(inverse + r * L::kSquareLd + c, tf32(x)); });
  } else {
    form_inverse<C, K>(a, block, keys, square, inverse, beta, gamma, row_scale);
  }
  __syncthreads();

  // w = T (β exp(γ) ⊙ k), then u = T (β ⊙ v), 64 columns at a time. T is lower triangular: row tile r
  // needs depth (r + 1)·16.
  const auto multiply_by_inverse = [&](float* out, int cols, int first_column) {
    const int width = min(kColumnTile, cols - first_column);
    for_each_tile_pair(kSquareTiles, width / kTile, [&](int r, int c) {
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      multiply<wmma::row_major, C, L::kSquareLd, kColumnLd>(acc, inverse + r * kTile * L::kSquareLd,
                                                            operand + c * kTile, (r + 1) * kTile);
      wmma::store_matrix_sync(out + r * kTile * cols + first_column + c * kTile, acc, cols,
                              wmma::mem_row_major);
    });
  };
  for (int first_column = 0; first_column < K; first_column += kColumnTile) {
    const int width = min(kColumnTile, K - first_column);
    copy_rows(
        C, width,
        [&](int r, int c) {
          return *reinterpret_cast<const float4*>(keys + r * L::kKeysLd + first_column + c);
        },
        [&](int r, int c, float4 x) { store4(operand + r * kColumnLd + c, tf32(scaled(x, row_scale[r]))); });
    __syncthreads();
    multiply_by_inverse(a.w + block.chunk * C * K, K, first_column);
    __syncthreads();
  }
  if (a.copies.w != nullptr) {
    // The block's own stores of w, visible after the barrier (plain loads: not the read-only cache's).
    const float* w = a.w + block.chunk * C * K;
    auto* w_copy = static_cast<__nv_bfloat16*>(a.copies.w) + block.chunk * C * K;
    copy_rows(
        C, K, [&](int r, int c) { return *reinterpret_cast<const float4*>(w + r * K + c); },
        [&](int r, int c, float4 x) { store4(w_copy + r * K + c, x); });
  }
  if (a.u == nullptr) return;
  for (int first_column = 0; first_column < V; first_column += kColumnTile) {
    load_chunk(operand, kColumnLd, v_rows, C, min(kColumnTile, V - first_column), first_column, beta, true);
    __syncthreads();
    multiply_by_inverse(a.u + block.chunk * C * V, V, first_column);
    __syncthreads();
  }
}

// ---- chunk_output ----

/// Shared-memory layout of chunk_output, in floats: the read operand [exp(γ) ⊙ q | P] of C rows and
/// K + C columns, then one region that holds k while P is formed, then the [S ; v_new] rows of one
/// 64-column tile, then that tile's output.
template <int C, int K>
struct OutputLayout {
  static constexpr int kReadsLd = K + C + kPad;
  static constexpr int kKeysLd = K + kPad;
  static constexpr int kReads = 0;
  static constexpr int kRegion = kReads + C * kReadsLd;
  static constexpr int kRegionFloats = larger(C * kKeysLd, (K + C) * kColumnLd);
  static constexpr int kGamma = kRegion + kRegionFloats;
  static constexpr int kFloats = kGamma + C;
};

struct OutputArgs {
  TokenRows q, k;
  const float *gamma, *states, *v_new;
  void* out;  // contiguous [B, T, H, V]
  float scale;
  int tokens, heads, value_dim;
};

/// The rows of S and v_new each thread of chunk_output keeps in flight per value pass (64 columns): all of
/// them up to K = 128, in one round of loads; at most 12, which K = 256 would spill otherwise.
template <int C, int K>
constexpr int kOutputRowsInFlight = (K + C) * (kColumnTile / 4) / kThreads < 12
                                        ? (K + C) * (kColumnTile / 4) / kThreads
                                        : 12;

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kThreads, 2) chunk_output_kernel(OutputArgs a) {
  using L = OutputLayout<C, K>;
  constexpr int kLd = L::kReadsLd;
  constexpr int kSquareTiles = C / kTile;
  constexpr int kTilesPerWarp = larger(1, kSquareTiles * (kColumnTile / kTile) / kWarps);
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  float* reads = shared + L::kReads;
  float* region = shared + L::kRegion;
  float* gamma = shared + L::kGamma;
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);
  const int warp = threadIdx.x / 32;

  // q and k in one round of loads.
  copy_row_pairs(ChunkRows<Scalar>(a.q, block), ChunkRows<Scalar>(a.k, block), C, K,
                 [&](int r, int c, RowPair x) {
                   store4(reads + r * kLd + c, tf32(x.first));
                   store4(region + r * L::kKeysLd + c, tf32(x.second));
                 });
  for (int i = threadIdx.x; i < C; i += kThreads)
    gamma[i] = a.gamma[block.chunk * C + i];
  __syncthreads();
  // P = q kᵀ into the columns after q, on and below the diagonal tiles.
  for_each_tile(kSquareTiles, kSquareTiles, [&](int r, int c) {
    if (c > r) return;
    Accumulator acc;
    wmma::fill_fragment(acc, 0.f);
    multiply<wmma::col_major, K, kLd, L::kKeysLd>(acc, reads + r * kTile * kLd,
                                                  region + c * kTile * L::kKeysLd);
    store_shared(reads + r * kTile * kLd + K + c * kTile, acc, kLd);
  });
  __syncthreads();
  for_each_entry(C, C, [&](int i, int j) {
    float& entry = reads[i * kLd + K + j];
    entry = j <= i ? wmma::__float_to_tf32(entry * expf(gamma[i] - gamma[j])) : 0.f;
  });
  copy_rows(
      C, K, [&](int r, int c) { return *reinterpret_cast<const float4*>(reads + r * kLd + c); },
      [&](int r, int c, float4 x) { store4(reads + r * kLd + c, tf32(scaled(x, expf(gamma[r])))); });
  __syncthreads();

  Scalar* out = static_cast<Scalar*>(a.out);
  for (int first_column = 0; first_column < V; first_column += kColumnTile) {
    const int width = min(kColumnTile, V - first_column);
    // S's K rows and v_new's C rows, stacked as the region's K + C rows, in one round of loads.
    const float* states = a.states + block.chunk * K * V + first_column;
    const float* v_new = a.v_new + block.chunk * C * V + first_column;
    copy_rows<kThreads, kOutputRowsInFlight<C, K>>(
        K + C, width,
        [&](int r, int c) { return load4(r < K ? states + r * V + c : v_new + (r - K) * V + c); },
        [&](int r, int c, float4 x) { store4(region + r * kColumnLd + c, tf32(x)); });
    __syncthreads();
    // Row tile r reads q̂ against S, then P's columns up to its diagonal against v_new.
    const int col_tiles = width / kTile;
    Accumulator acc[kTilesPerWarp];
#pragma unroll
    for (int s = 0; s < kTilesPerWarp; ++s) {
      const int tile = warp + s * kWarps;
      if (tile >= kSquareTiles * col_tiles) continue;
      const int r = tile / col_tiles, c = tile % col_tiles;
      wmma::fill_fragment(acc[s], 0.f);
      multiply<wmma::row_major, K, kLd, kColumnLd>(acc[s], reads + r * kTile * kLd, region + c * kTile);
      multiply<wmma::row_major, C, kLd, kColumnLd>(acc[s], reads + r * kTile * kLd + K,
                                                   region + K * kColumnLd + c * kTile, (r + 1) * kTile);
    }
    __syncthreads();  // the values are read: the region takes the output tile
#pragma unroll
    for (int s = 0; s < kTilesPerWarp; ++s) {
      const int tile = warp + s * kWarps;
      if (tile >= kSquareTiles * col_tiles) continue;
      const int r = tile / col_tiles, c = tile % col_tiles;
      store_shared(region + r * kTile * kColumnLd + c * kTile, acc[s], kColumnLd);
    }
    __syncthreads();
    copy_rows(
        block.valid, width,
        [&](int r, int c) { return *reinterpret_cast<const float4*>(region + r * kColumnLd + c); },
        [&](int r, int c, float4 x) {
          const size_t row = block.token(r);
          store4(out + row * V + first_column + c, scaled(x, a.scale));
        });
    __syncthreads();
  }
}

// ---- launches ----

/// The (C, K) pairs chunk_prepare and chunk_output are instantiated for.
template <class F>
bool with_stage_shape(const ChunkStageDims& d, F&& f) {
  return with_instantiated_shape<ChunkShape<64, 128>, ChunkShape<64, 64>, ChunkShape<64, 256>,
                                 ChunkShape<32, 64>, ChunkShape<32, 128>, ChunkShape<32, 256>>(
      d, std::forward<F>(f));
}

}  // namespace

bool supports_chunk_stages(const ChunkStageDims& d) {
  if (d.value_dim < kTile || d.value_dim % kTile != 0 || d.value_dim > 4 * kThreads) return false;
  if (d.batch < 1 || d.heads < 1 || d.batch * d.heads > 65535 || d.tokens < 1 ||
      d.tokens > (int64_t{1} << 30))
    return false;
  const size_t limit = static_cast<size_t>(std::max(max_shared_bytes(), 0));
  bool fits = false;
  const bool instantiated = with_stage_shape(d, [&]<int C, int K>() {
    fits = sizeof(float) * std::max(PrepareLayout<C, K>::kFloats, OutputLayout<C, K>::kFloats) <= limit;
  });
  return instantiated && fits;
}

const char* chunk_prepare(const TokenRows& k, const TokenRows& v, const float* g, const float* beta,
                          float* gamma, float* k_to_end, float* chunk_decay, float* w, float* inverse,
                          const float* known_inverse, float* u, const PreparedCopies& copies,
                          const ChunkStageDims& dims, void* stream) {
  const PrepareArgs args{k,
                         v,
                         g,
                         beta,
                         gamma,
                         k_to_end,
                         chunk_decay,
                         w,
                         inverse,
                         known_inverse,
                         u,
                         copies,
                         static_cast<int>(dims.tokens),
                         static_cast<int>(dims.heads),
                         static_cast<int>(dims.value_dim)};
  const char* error = "chunk_prepare: no kernel for this chunk length and key dim";
  with_stage_shape(dims, [&]<int C, int K>() {
    constexpr int kFloats = PrepareLayout<C, K>::kFloats;
    error = dims.bf16 ? launch(chunk_prepare_kernel<__nv_bfloat16, C, K>, args, kFloats, dims, stream)
                      : launch(chunk_prepare_kernel<float, C, K>, args, kFloats, dims, stream);
  });
  return error;
}

const char* chunk_output(const TokenRows& q, const TokenRows& k, const float* gamma, const float* states,
                         const float* v_new, double scale, void* out, const ChunkStageDims& dims,
                         void* stream) {
  const OutputArgs args{q,
                        k,
                        gamma,
                        states,
                        v_new,
                        out,
                        static_cast<float>(scale),
                        static_cast<int>(dims.tokens),
                        static_cast<int>(dims.heads),
                        static_cast<int>(dims.value_dim)};
  const char* error = "chunk_output: no kernel for this chunk length and key dim";
  with_stage_shape(dims, [&]<int C, int K>() {
    constexpr int kFloats = OutputLayout<C, K>::kFloats;
    error = dims.bf16 ? launch(chunk_output_kernel<__nv_bfloat16, C, K>, args, kFloats, dims, stream)
                      : launch(chunk_output_kernel<float, C, K>, args, kFloats, dims, stream);
  });
  return error;
}

}  // namespace dla::ops::fused::kernels
