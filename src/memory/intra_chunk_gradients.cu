// CUDA kernel of the per-chunk stages' backward (intra_chunk_gradients_kernel.h). One block of 512 threads
// per chunk keeps the chunk's C × C terms (P, k kᵀ ⊙ D, T, Λ and the gradients formed from them) and up to
// three C × K operands in shared memory, runs every product of intra_chunk.cpp's backward_terms on TF32
// tensor cores (WMMA m16n16k8, operands rounded once when stored) and writes dq, dk, dv, dg, dβ and dΛ, so
// that none of the intermediate C × C or C × K terms goes through global memory. Triangular factors (P, T,
// R, the gradients of the decayed pairs) bound the depth of each product to the tiles that can be nonzero.
// Gradients that only need the lower triangle (dT, dA, dP) are formed there only.
#include <cuda_runtime.h>

#include "chunk_products.cuh"
#include "intra_chunk_gradients_kernel.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's per-chunk gradient kernel uses TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using namespace chunk_products;

constexpr int kKeptTiles = (kLowerTiles + kBlockWarps - 1) / kBlockWarps;  // G's lower tiles per warp
constexpr int kValueTilesPerWarp = (kRowTiles * (kValueTile / kTile) + kBlockWarps - 1) / kBlockWarps;
/// The 16 × 16 tiles of a C × K block per warp: every warp takes as many.
template <int K>
constexpr int kWideTilesPerWarp = kRowTiles*(K / kTile) / kBlockWarps;

/// The lower tile the warp keeps in slot s across passes (s < kKeptTiles), or false.
__device__ bool kept_lower_tile(int s, int& r, int& c) {
  const int tile = static_cast<int>(threadIdx.x / 32) + s * kBlockWarps;
  if (tile >= kLowerTiles) return false;
  r = 0;
  while ((r + 1) * (r + 2) / 2 <= tile)
    ++r;
  c = tile - r * (r + 1) / 2;
  return true;
}

/// Shared-memory layout in floats: three C × K slots, six C × C slots, per-row vectors.
template <int K>
struct Layout {
  static constexpr int kWideLd = K + kPad;
  static constexpr int kWide = kC * kWideLd;
  static constexpr int kSquare = kC * kSquareLd;
  static_assert(kC * kValueLd <= kWide, "a value tile fits a C × K slot");
  static constexpr int kVectors = 3 * kWide + 6 * kSquare;
  enum Vector { kGamma, kExpGamma, kToEnd, kBeta, kDGamma, kDBeta, kToEndTerm, kNumVectors };
  static constexpr int kFloats = kVectors + kNumVectors * kC;
};

template <bool kDeltaRule, int K>
__global__ void __launch_bounds__(kBlockThreads, 1)
    intra_chunk_gradients_kernel(IntraChunkGradientArgs a, IntraChunkGradientDims dims) {
  using L = Layout<K>;
  constexpr int kWideLd = L::kWideLd;
  constexpr int kWideTiles = kWideTilesPerWarp<K>;
  static_assert(kWideTiles >= 1 && kWideTiles * kBlockWarps == kRowTiles * (K / kTile));
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  // C × K slots: wide0 q, then value tiles of dI, G, dQ̃, dX; keys k, then dk's products; wide2 value tiles
  // of v', W, dW, q, then dq's products.
  float* wide0 = shared;
  float* keys = wide0 + L::kWide;
  float* wide2 = keys + L::kWide;
  // C × C slots.
  float* pairs = wide2 + L::kWide;          // P = (q kᵀ) ⊙ D, then Σ = dKK + dKKᵀ
  float* key_pairs = pairs + L::kSquare;    // k kᵀ ⊙ D, then dKK = β dA ⊙ D
  float* inverse = key_pairs + L::kSquare;  // T
  float* lam = inverse + L::kSquare;        // Λ, then dP
  float* reads = lam + L::kSquare;          // R = P T, then dT, then dA
  float* square5 = reads + L::kSquare;      // R ⊙ Λ, then dR, then scratch, then Tᵀ dT
  float* vectors = shared + L::kVectors;
  float* gamma = vectors + L::kGamma * kC;
  float* exp_gamma = vectors + L::kExpGamma * kC;
  float* to_end = vectors + L::kToEnd * kC;
  float* beta = vectors + L::kBeta * kC;
  float* d_gamma = vectors + L::kDGamma * kC;
  float* d_beta = vectors + L::kDBeta * kC;
  float* to_end_term = vectors + L::kToEndTerm * kC;

  const int V = static_cast<int>(dims.value_dim);
  const size_t chunk = blockIdx.x;
  const size_t rows_k = chunk * kC * K, rows_v = chunk * kC * V, pairs_at = chunk * kC * kC;
  const BlockRows q_rows(a.q, dims), k_rows(a.k, dims), v_rows(a.v, dims);
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);

  // γ: one warp scans the chunk's log gates.
  for (int i = threadIdx.x; i < kC; i += kBlockThreads)
    gamma[i] = a.g[chunk * kC + i];
  __syncthreads();
  cumsum_in_warp(gamma, kC);
  load_chunk_operands<kDeltaRule>(a, pairs_at, q_rows, k_rows, K, kWideLd, wide0, keys, kSquareLd, inverse,
                                  lam);
  __syncthreads();
  for (int i = threadIdx.x; i < kC; i += kBlockThreads) {
    exp_gamma[i] = expf(gamma[i]);
    to_end[i] = expf(gamma[kC - 1] - gamma[i]);
    beta[i] = kDeltaRule ? a.beta[chunk * kC + i] : 1.f;
    d_gamma[i] = 0.f;
    d_beta[i] = 0.f;
  }

  // P = (q kᵀ) ⊙ D and k kᵀ ⊙ D, on and below the diagonal tiles.
  for_each_lower_tile([&](int r, int c) {
    Accumulator acc;
    wmma::fill_fragment(acc, 0.f);
    multiply(acc, rows_of<kWideLd>(wide0), transpose_of<kWideLd>(keys), r, c, 0, K);
    store_shared(pairs + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
    if constexpr (kDeltaRule) {
      wmma::fill_fragment(acc, 0.f);
      multiply(acc, rows_of<kWideLd>(keys), transpose_of<kWideLd>(keys), r, c, 0, K);
      store_shared(key_pairs + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
    }
  });
  __syncthreads();
  // The tiles above the diagonal were never written: zeros there, not products with what they held.
  for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
    const bool causal = j <= i;
    const float decay = causal ? expf(gamma[i] - gamma[j]) : 0.f;
    float& p = pairs[i * kSquareLd + j];
    p = causal ? wmma::__float_to_tf32(p * decay) : 0.f;
    if constexpr (kDeltaRule) {
      float& kk = key_pairs[i * kSquareLd + j];
      kk = causal ? kk * decay : 0.f;
    }
  });
  __syncthreads();

  // R = P T (lower triangular).
  const float* reads_of_keys = pairs;
  if constexpr (kDeltaRule) {
    lower_product(reads, pairs, inverse);
    __syncthreads();
    reads_of_keys = reads;
  }
  for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
    square5[i * kSquareLd + j] =
        wmma::__float_to_tf32(reads_of_keys[i * kSquareLd + j] * lam[i * kSquareLd + j]);
  });
  __syncthreads();

  // Over value tiles: G = dI v'ᵀ (kept in registers, lower tiles) and dv' = dv'_out + (R ⊙ Λ)ᵀ dI.
  Accumulator g_acc[kKeptTiles];
  for (Accumulator& acc : g_acc)
    wmma::fill_fragment(acc, 0.f);
  for (int first = 0; first < V; first += kValueTile) {
    const int width = min(kValueTile, V - first);
    const int value_tiles = width / kTile;
    // dv'_out's tiles load first: they are in flight while the operands are copied.
    Accumulator dv_acc[kValueTilesPerWarp];
    for (int s = 0; s < kValueTilesPerWarp; ++s) {
      const int tile = warp + s * kBlockWarps, r = tile / value_tiles, c = tile % value_tiles;
      if (tile >= kRowTiles * value_tiles) continue;
      if constexpr (kDeltaRule)
        wmma::load_matrix_sync(dv_acc[s], a.d_source_v + rows_v + r * kTile * V + first + c * kTile, V,
                               wmma::mem_row_major);
      else
        wmma::fill_fragment(dv_acc[s], 0.f);
    }
    if constexpr (kDeltaRule)
      copy_operands(width, operand(wide0, kValueLd, a.d_intra + rows_v, V, first),
                    operand(wide2, kValueLd, a.source_v + rows_v, V, first));
    else
      copy_operands(width, operand(wide0, kValueLd, a.d_intra + rows_v, V, first),
                    operand(wide2, kValueLd, v_rows, first));
    __syncthreads();
    for (int s = 0; s < kKeptTiles; ++s) {
      int r, c;
      if (kept_lower_tile(s, r, c))
        multiply(g_acc[s], rows_of<kValueLd>(wide0), transpose_of<kValueLd>(wide2), r, c, 0, width);
    }
    for (int s = 0; s < kValueTilesPerWarp; ++s) {
      const int tile = warp + s * kBlockWarps, r = tile / value_tiles, c = tile % value_tiles;
      if (tile >= kRowTiles * value_tiles) continue;
      multiply(dv_acc[s], transpose_of<kSquareLd>(square5), rows_of<kValueLd>(wide0), r, c, r * kTile, kC);
    }
    __syncthreads();
    for (int s = 0; s < kValueTilesPerWarp; ++s) {
      const int tile = warp + s * kBlockWarps, r = tile / value_tiles, c = tile % value_tiles;
      if (tile < kRowTiles * value_tiles)
        store_shared(wide2 + r * kTile * kValueLd + c * kTile, dv_acc[s], kValueLd);
    }
    __syncthreads();
    // dv = β dv'; dβ gets Σ_c dv' v.
    const BlockRows d_v_rows(a.d_v, dims);
    for_each_row_vector(width, [&](int i, int c, bool leader) {
      const float4 d_source = load_shared4(wide2 + i * kValueLd + c);
      if constexpr (kDeltaRule) {
        d_v_rows.store(i, first + c, scaled(d_source, beta[i]));
        const float part = group_sum(dot(d_source, v_rows.load(i, first + c)), width / 4);
        if (leader) d_beta[i] += part;
      } else {
        d_v_rows.store(i, first + c, d_source);
      }
    });
    __syncthreads();
  }
  for (int s = 0; s < kKeptTiles; ++s) {
    int r, c;
    if (kept_lower_tile(s, r, c))
      store_shared(wide0 + r * kTile * kSquareLd + c * kTile, g_acc[s], kSquareLd);
  }
  __syncthreads();
  // dΛ = G ⊙ R; dR = G ⊙ Λ (for SSD, dP).
  for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
    const float g = j <= i ? wide0[i * kSquareLd + j] : 0.f;
    a.d_lam_in[pairs_at + i * kC + j] = g * reads_of_keys[i * kSquareLd + j];
    const float d_reads = g * lam[i * kSquareLd + j];
    square5[i * kSquareLd + j] = kDeltaRule ? wmma::__float_to_tf32(d_reads) : d_reads;
  });
  __syncthreads();

  const float* d_pairs = square5;  // dP
  if constexpr (kDeltaRule) {
    copy_operands(K, operand(wide0, kWideLd, a.d_transported_q + rows_k, K),
                  operand(wide2, kWideLd, a.w + rows_k, K));
    __syncthreads();
    // −dW_out's tiles of the product after the next barrier load first, in flight during these products.
    Accumulator d_w_acc[kWideTiles];
#pragma unroll
    for (int s = 0; s < kWideTiles; ++s) {
      const int tile = warp + s * kBlockWarps, r = tile / (K / kTile), c = tile % (K / kTile);
      wmma::load_matrix_sync(d_w_acc[s], a.d_w + rows_k + r * kTile * K + c * kTile, K, wmma::mem_row_major);
    }
    // dP = dR Tᵀ − dQ̃ Wᵀ into Λ's slot and dT = dT_out + Pᵀ dR into R's, lower tiles.
    for_each_lower_tile([&](int r, int c) {
      Accumulator acc, minus, d_t;
      wmma::load_matrix_sync(d_t, a.d_t_inverse + pairs_at + r * kTile * kC + c * kTile, kC,
                             wmma::mem_row_major);
      wmma::fill_fragment(acc, 0.f);
      wmma::fill_fragment(minus, 0.f);
      multiply(acc, rows_of<kSquareLd>(square5), transpose_of<kSquareLd>(inverse), r, c, 0, (c + 1) * kTile);
      multiply(minus, rows_of<kWideLd>(wide0), transpose_of<kWideLd>(wide2), r, c, 0, K);
#pragma unroll
      for (int t = 0; t < acc.num_elements; ++t)
        acc.x[t] -= minus.x[t];
      store_shared(lam + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
      multiply(d_t, transpose_of<kSquareLd>(pairs), rows_of<kSquareLd>(square5), r, c, r * kTile, kC);
      store_shared(reads + r * kTile * kSquareLd + c * kTile, d_t, kSquareLd);
    });
    __syncthreads();
    // dW = dW_out − Pᵀ dQ̃ over W's slot (the accumulator holds −dW).
#pragma unroll
    for (int s = 0; s < kWideTiles; ++s) {
      const int tile = warp + s * kBlockWarps, r = tile / (K / kTile), c = tile % (K / kTile);
      Accumulator& acc = d_w_acc[s];
#pragma unroll
      for (int t = 0; t < acc.num_elements; ++t)
        acc.x[t] = -acc.x[t];
      multiply(acc, transpose_of<kSquareLd>(pairs), rows_of<kWideLd>(wide0), r, c, r * kTile, kC);
#pragma unroll
      for (int t = 0; t < acc.num_elements; ++t)
        acc.x[t] = wmma::__float_to_tf32(-acc.x[t]);
      store_shared(wide2 + r * kTile * kWideLd + c * kTile, acc, kWideLd);
    }
    __syncthreads();
    // dT += (dW kᵀ) ⊙ (β exp(γ))_column, strictly below the diagonal (the only part dA reads), each warp
    // through its own tile of scratch; dX = Tᵀ dW over dQ̃'s slot.
    for (int tile = warp; tile < kRowTiles * kRowTiles; tile += kBlockWarps) {
      const int r = tile / kRowTiles, c = tile % kRowTiles;
      float* scratch = square5 + r * kTile * kSquareLd + c * kTile;
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      if (c <= r) multiply(acc, rows_of<kWideLd>(wide2), transpose_of<kWideLd>(keys), r, c, 0, K);
      store_shared(scratch, acc, kSquareLd);
      __syncwarp();
      for (int e = lane; e < kTile * kTile; e += 32) {
        const int i = r * kTile + e / kTile, j = c * kTile + e % kTile;
        float& d_t = reads[i * kSquareLd + j];
        d_t = j < i ? wmma::__float_to_tf32(d_t + scratch[(e / kTile) * kSquareLd + e % kTile] * beta[j] *
                                                      exp_gamma[j])
                    : 0.f;
      }
    }
    for_each_tile<kBlockThreads>(kRowTiles, K / kTile, [&](int r, int c) {
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      multiply(acc, transpose_of<kSquareLd>(inverse), rows_of<kWideLd>(wide2), r, c, r * kTile, kC);
      store_shared(wide0 + r * kTile * kWideLd + c * kTile, acc, kWideLd);
    });
    __syncthreads();
    // M = Tᵀ dT into the scratch slot, then dA = −(M Tᵀ) below the diagonal over dT's slot.
    for (int tile = warp; tile < kRowTiles * kRowTiles; tile += kBlockWarps) {
      const int r = tile / kRowTiles, c = tile % kRowTiles;
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      multiply(acc, transpose_of<kSquareLd>(inverse), rows_of<kSquareLd>(reads), r, c, max(r, c) * kTile, kC);
      round_to_tf32(acc);
      store_shared(square5 + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
    }
    __syncthreads();
    for_each_lower_tile([&](int r, int c) {
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      multiply(acc, rows_of<kSquareLd>(square5), transpose_of<kSquareLd>(inverse), r, c, 0, (c + 1) * kTile);
      store_shared(reads + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
    });
    d_pairs = lam;
  }
  copy_operands(K, operand(wide2, kWideLd, q_rows));
  __syncthreads();

  // The decayed pairs' gradients: dQK = dP ⊙ D (in place), dKK = β dA ⊙ D (over k kᵀ ⊙ D); γ gets each
  // entry's dD ⊙ D at its row and minus it at its column, β the row sums of dA ⊙ (k kᵀ ⊙ D).
  {
    float* d_qk = kDeltaRule ? lam : square5;
    const int j = threadIdx.x % kC;
    float column_sum = 0.f;
    for (int i = threadIdx.x / kC; i < kC; i += kBlockThreads / kC) {
      const float decay = j <= i ? expf(gamma[i] - gamma[j]) : 0.f;
      const float d_p = j <= i ? d_pairs[i * kSquareLd + j] : 0.f;
      float term = d_p * pairs[i * kSquareLd + j];
      float beta_term = 0.f;
      d_qk[i * kSquareLd + j] = wmma::__float_to_tf32(d_p * decay);
      if constexpr (kDeltaRule) {
        const float d_a = j < i ? -reads[i * kSquareLd + j] : 0.f;
        float& kk = key_pairs[i * kSquareLd + j];
        beta_term = d_a * kk;
        term += beta[i] * beta_term;
        kk = beta[i] * d_a * decay;
      }
      column_sum += term;
      const float row_terms = warp_sum(term), row_beta_terms = warp_sum(beta_term);
      if (lane == 0) {
        atomicAdd(d_gamma + i, row_terms);
        if constexpr (kDeltaRule) atomicAdd(d_beta + i, row_beta_terms);
      }
    }
    atomicAdd(d_gamma + j, -column_sum);
  }
  __syncthreads();
  if constexpr (kDeltaRule) {
    // Σ = dKK + dKKᵀ over P's slot.
    for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
      pairs[i * kSquareLd + j] =
          wmma::__float_to_tf32(key_pairs[i * kSquareLd + j] + key_pairs[j * kSquareLd + i]);
    });
    __syncthreads();
  }

  // dq = dQ̃ ⊙ exp(γ) + dQK k; dk = dK̃ ⊙ exp(γ_last − γ) + dQKᵀ q (+ β exp(γ) ⊙ dX + Σ k).
  {
    const float* d_qk = kDeltaRule ? lam : square5;
    Accumulator dq_acc[kWideTiles], dk_acc[kWideTiles];
#pragma unroll
    for (int s = 0; s < kWideTiles; ++s) {
      const int tile = warp + s * kBlockWarps, r = tile / (K / kTile), c = tile % (K / kTile);
      wmma::fill_fragment(dq_acc[s], 0.f);
      wmma::fill_fragment(dk_acc[s], 0.f);
      multiply(dq_acc[s], rows_of<kSquareLd>(d_qk), rows_of<kWideLd>(keys), r, c, 0, (r + 1) * kTile);
      multiply(dk_acc[s], transpose_of<kSquareLd>(d_qk), rows_of<kWideLd>(wide2), r, c, r * kTile, kC);
      if constexpr (kDeltaRule)
        multiply(dk_acc[s], rows_of<kSquareLd>(pairs), rows_of<kWideLd>(keys), r, c, 0, kC);
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kWideTiles; ++s) {
      const int tile = warp + s * kBlockWarps, r = tile / (K / kTile), c = tile % (K / kTile);
      store_shared(wide2 + r * kTile * kWideLd + c * kTile, dq_acc[s], kWideLd);
      store_shared(keys + r * kTile * kWideLd + c * kTile, dk_acc[s], kWideLd);
    }
  }
  __syncthreads();
  const BlockRows d_q_rows(a.d_q, dims), d_k_rows(a.d_k, dims);
  for_each_row_vector(K, [&](int i, int c, bool leader) {
    const size_t at = rows_k + static_cast<size_t>(i) * K + c;
    const float4 q = q_rows.load(i, c), k = k_rows.load(i, c), d_tq = load4(a.d_transported_q + at),
                 d_kte = load4(a.d_k_to_end + at);
    float4 d_q = load_shared4(wide2 + i * kWideLd + c), d_k = load_shared4(keys + i * kWideLd + c);
    const float e = exp_gamma[i], to_end_i = to_end[i];
    d_q = make_float4(d_q.x + e * d_tq.x, d_q.y + e * d_tq.y, d_q.z + e * d_tq.z, d_q.w + e * d_tq.w);
    d_k = make_float4(d_k.x + to_end_i * d_kte.x, d_k.y + to_end_i * d_kte.y, d_k.z + to_end_i * d_kte.z,
                      d_k.w + to_end_i * d_kte.w);
    float x_terms = 0.f;
    if constexpr (kDeltaRule) {
      const float4 d_x = load_shared4(wide0 + i * kWideLd + c);
      const float f = beta[i] * e;
      d_k = make_float4(d_k.x + f * d_x.x, d_k.y + f * d_x.y, d_k.z + f * d_x.z, d_k.w + f * d_x.w);
      x_terms = group_sum(dot(d_x, k), K / 4);
    }
    d_q_rows.store(i, c, d_q);
    d_k_rows.store(i, c, d_k);
    const float q_terms = group_sum(dot(d_tq, q), K / 4),
                end_terms = group_sum(dot(d_kte, k), K / 4) * to_end_i;
    if (leader) {
      d_gamma[i] += e * q_terms + beta[i] * e * x_terms - end_terms;
      d_beta[i] += e * x_terms;
      to_end_term[i] = end_terms;
    }
  });
  __syncthreads();
  // g = reverse cumsum of dγ, after γ_last takes the terms of k̃ and e.
  if (warp == 0) {
    float end_terms = 0.f;
    for (int i = lane; i < kC; i += 32)
      end_terms += to_end_term[i];
    end_terms = warp_sum(end_terms);
    if (lane == 0) d_gamma[kC - 1] += end_terms + a.d_chunk_decay[chunk] * a.chunk_decay[chunk];
    __syncwarp();
    reverse_cumsum_in_warp(d_gamma, kC);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kC; i += kBlockThreads)
    a.d_g[chunk * kC + i] = d_gamma[i];
  if constexpr (kDeltaRule) {
    for (int i = threadIdx.x; i < kC; i += kBlockThreads)
      a.d_beta[chunk * kC + i] = d_beta[i];
  }
}

}  // namespace

bool supports_intra_chunk_gradients(const IntraChunkGradientDims& dims) {
  // Either kernel may run: both layouts must fit.
  const auto floats = [](size_t tf32_floats, int64_t key_dim) {
    return std::max(tf32_floats, intra_chunk_gradients_bf16_bytes(key_dim) / sizeof(float));
  };
  return chunk_products::supports_chunk_dims(dims, floats(Layout<64>::kFloats, 64),
                                             floats(Layout<128>::kFloats, 128));
}

const char* intra_chunk_gradients(const IntraChunkGradientArgs& args, const IntraChunkGradientDims& dims,
                                  void* stream) {
  if (args.q.bf16) return intra_chunk_gradients_bf16(args, dims, stream);
  return chunk_products::with_chunk_kernel(dims, [&](auto delta_rule, auto key_dim) {
    return chunk_products::launch_per_chunk(
        intra_chunk_gradients_kernel<decltype(delta_rule)::value, decltype(key_dim)::value>, args, dims,
        Layout<decltype(key_dim)::value>::kFloats, stream);
  });
}

}  // namespace dla::memory::kernels
