// CUDA kernel of the per-chunk stages' backward for bf16 inputs (intra_chunk_gradients_kernel.h): the
// products of intra_chunk_gradients.cu's TF32 kernel, with each warp holding a 32 × 32 block of a product in
// registers
// (../ops/warp_block.cuh) and the operands in shared memory as bf16, fragments loaded by ldmatrix, on bf16
// tensor cores with float32 accumulators. Terms that are read entry by entry (P, k kᵀ ⊙ D, Λ, R and the
// gradients of the pairs) stay float32. Gradients that only need the lower triangle are formed there only,
// and no product reads a block above a triangular factor's diagonal, so those blocks are never written.
// Outputs whose rows leave registers straight to global memory (dv, dq, dk) add their elementwise terms and
// row dots there, lane by lane.
#include <cuda_runtime.h>

#include "chunk_products.cuh"
#include "intra_chunk_gradients_kernel.h"

namespace dla::memory::kernels {
namespace {

using namespace chunk_products;
using Bf16 = __nv_bfloat16;

constexpr int kPassColumns = 128;  // value columns per pass: a 32 × 32 block of dv' for each of 8 warps
constexpr int kRowBlocks = kC / kBlock;
constexpr int kLowerBlocks = kRowBlocks * (kRowBlocks + 1) / 2;

/// Shared-memory layout in bytes: k, float32 C × C terms, bf16 C × C operands, and a region whose use
/// changes from phase to phase (q; the value passes' dI and v', and G; dQ̃, W and dW; q again).
template <int K>
struct Bf16Layout {
  static constexpr int kWideLd = K + kOperandPad<Bf16>;
  static constexpr int kSquareOperandLd = kC + kOperandPad<Bf16>;
  static constexpr int kValueLd = kPassColumns + kOperandPad<Bf16>;
  static constexpr int kWide = kC * kWideLd * 2;
  static constexpr int kSquareOperand = kC * kSquareOperandLd * 2;
  static constexpr int kSquareTerm = kC * kSquareLd * 4;
  static constexpr int kKeys = 0;
  // float32 C × C terms.
  static constexpr int kLam = kKeys + kWide;              // Λ, then dP
  static constexpr int kReads = kLam + kSquareTerm;       // R, then dA
  static constexpr int kPairs = kReads + kSquareTerm;     // P = (q kᵀ) ⊙ D
  static constexpr int kKeyPairs = kPairs + kSquareTerm;  // k kᵀ ⊙ D, then dKK
  // For dq and dk: dQ̃ over Λ and R, dK̃ over P and k kᵀ ⊙ D, float32, once those are read.
  static constexpr int kStagedLd = K + 8;
  static constexpr int kStagedDQueries = kLam;
  static constexpr int kStagedDKeys = kPairs;
  static_assert(kC * kStagedLd * 4 <= 2 * kSquareTerm);
  // bf16 C × C operands.
  static constexpr int kInverse = kKeyPairs + kSquareTerm;            // T
  static constexpr int kPairOperand = kInverse + kSquareOperand;      // P, then dQK = dP ⊙ D
  static constexpr int kReadOperand = kPairOperand + kSquareOperand;  // R ⊙ Λ, then dR, then dKK + dKKᵀ
  static constexpr int kDInverse = kReadOperand + kSquareOperand;     // dT
  static constexpr int kProducts = kDInverse + kSquareOperand;        // M = Tᵀ dT
  // The region.
  static constexpr int kRegion = kProducts + kSquareOperand;
  static constexpr int kDIntra = kRegion;                            // a pass of dI
  static constexpr int kSourceValues = kDIntra + kC * kValueLd * 2;  // a pass of v'
  static constexpr int kDQueries = kRegion;                          // dQ̃
  static constexpr int kWeights = kDQueries + kWide;                 // W
  static constexpr int kDWeights = kWeights + kWide;                 // dW
  // G = Σ dI v'ᵀ, float32, added to pass by pass, behind both.
  static constexpr int kGram = kRegion + larger(3 * kWide, 2 * kC * kValueLd * 2);
  static constexpr int kRegionBytes = kGram + kSquareTerm - kRegion;
  static constexpr int kVectors = kRegion + kRegionBytes;
  enum Vector { kGamma, kExpGamma, kToEnd, kBeta, kDGamma, kDBeta, kToEndTerm, kNumVectors };
  static constexpr int kBytes = kVectors + kNumVectors * kC * 4;
};

/// The sum of f(row, column, x, y) over the entry pairs a lane holds of each of the block's rows, added to
/// sums[row] once per row by the lanes that share it (f's rows are the block's own, 0..31).
template <class F>
__device__ void add_row_sums(const WarpBlock& block, float* sums, int first_row, int first_column, F f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = first_row + 16 * m + 8 * h + g;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 4; ++n)
        sum += f(row, first_column + 8 * n + 2 * t, block.c[m][n][2 * h], block.c[m][n][2 * h + 1]);
      sum = group_sum(sum, 4);
      if (t == 0) atomicAdd(sums + row, sum);
    }
}

/// block = −block.
__device__ void negate(WarpBlock& block) {
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        block.c[m][n][e] = -block.c[m][n][e];
}

template <bool kDeltaRule, int K>
__global__ void __launch_bounds__(kBlockThreads, 1)
    intra_chunk_gradients_bf16_kernel(IntraChunkGradientArgs a, IntraChunkGradientDims dims) {
  using L = Bf16Layout<K>;
  constexpr int kWideLd = L::kWideLd, kOperandLd = L::kSquareOperandLd, kValueLd = L::kValueLd;
  constexpr int kKeyBlocks = K / kBlock, kWideBlocks = kRowBlocks * kKeyBlocks;
  constexpr int kColumnBlocks = kPassColumns / kBlock;
  // Warps 0.. hold dq's blocks and 8.. dk's (dX first); the C × C products take warps of their own.
  constexpr int kKeyGradientWarp = 8;
  static_assert(kWideBlocks <= kKeyGradientWarp && kKeyGradientWarp + kWideBlocks <= kBlockWarps);
  static_assert(kRowBlocks * kColumnBlocks + kLowerBlocks <= kBlockWarps && 2 * kLowerBlocks <= 8);
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  const auto operands = [&](int at) { return reinterpret_cast<Bf16*>(shared + at); };
  const auto terms = [&](int at) { return reinterpret_cast<float*>(shared + at); };
  Bf16* keys = operands(L::kKeys);
  float* lam = terms(L::kLam);
  float* reads = terms(L::kReads);
  float* pairs = terms(L::kPairs);
  float* key_pairs = terms(L::kKeyPairs);
  Bf16* inverse = operands(L::kInverse);
  Bf16* pair_operand = operands(L::kPairOperand);
  Bf16* read_operand = operands(L::kReadOperand);
  Bf16* d_inverse = operands(L::kDInverse);
  Bf16* m_operand = operands(L::kProducts);
  Bf16* queries = operands(L::kRegion);
  float* vectors = terms(L::kVectors);
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
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int wide_block = warp % kKeyGradientWarp;
  const int wide_rows = (wide_block / kKeyBlocks) * kBlock, wide_columns = (wide_block % kKeyBlocks) * kBlock;
  const bool dq_warp = warp < kWideBlocks;
  const bool dk_warp = warp >= kKeyGradientWarp && warp < kKeyGradientWarp + kWideBlocks;

  // γ: one warp scans the chunk's log gates.
  for (int i = threadIdx.x; i < kC; i += kBlockThreads)
    gamma[i] = a.g[chunk * kC + i];
  __syncthreads();
  cumsum_in_warp(gamma, kC);
  load_chunk_operands<kDeltaRule>(a, pairs_at, q_rows, k_rows, K, kWideLd, queries, keys, kOperandLd, inverse,
                                  lam);
  __syncthreads();
  for (int i = threadIdx.x; i < kC; i += kBlockThreads) {
    exp_gamma[i] = expf(gamma[i]);
    to_end[i] = expf(gamma[kC - 1] - gamma[i]);
    beta[i] = kDeltaRule ? a.beta[chunk * kC + i] : 1.f;
    d_gamma[i] = 0.f;
    d_beta[i] = 0.f;
    to_end_term[i] = 0.f;
  }

  // P = (q kᵀ) ⊙ D and k kᵀ ⊙ D on and below the diagonal blocks; for SSD (R = P) also R ⊙ Λ.
  if (warp < (kDeltaRule ? 2 : 1) * kLowerBlocks) {
    const bool key_product = warp >= kLowerBlocks;
    for_each_decayed_pair(warp % kLowerBlocks, key_product ? keys : queries, kWideLd, keys, kWideLd, K, gamma,
                          [&](int i, int j, float x, float y) {
                            store_pair((key_product ? key_pairs : pairs) + i * kSquareLd + j, x, y);
                            if (key_product) return;
                            store_pair(pair_operand + i * kOperandLd + j, x, y);
                            if constexpr (!kDeltaRule)
                              store_pair(read_operand + i * kOperandLd + j, x * lam[i * kSquareLd + j],
                                         y * lam[i * kSquareLd + j + 1]);
                          });
  }
  __syncthreads();
  // R = P T (row block r of P ends at its diagonal, column block c of T starts at its own), and R ⊙ Λ.
  const float* reads_of_keys = kDeltaRule ? reads : pairs;
  if constexpr (kDeltaRule) {
    if (warp < kLowerBlocks) {
      for_each_read_pair(warp, pair_operand, inverse, kOperandLd, [&](int i, int j, float x, float y) {
        store_pair(reads + i * kSquareLd + j, x, y);
        store_pair(read_operand + i * kOperandLd + j, x * lam[i * kSquareLd + j],
                   y * lam[i * kSquareLd + j + 1]);
      });
    }
    __syncthreads();
  }

  // Over value passes: G = Σ dI v'ᵀ (lower blocks, added to in shared memory) and dv' = dv'_out + (R ⊙ Λ)ᵀ
  // dI, whose row block r starts at its diagonal; dv = β dv' and dβ += ⟨dv', v⟩ leave from the registers.
  Bf16* d_intra = operands(L::kDIntra);  // q's products are done
  Bf16* source_values = operands(L::kSourceValues);
  float* gram_terms = terms(L::kGram);
  const int gram_warp = warp - kRowBlocks * kColumnBlocks;  // a lower block of G, or none
  const int2 gram_block = lower_block(max(gram_warp, 0));
  float* gram_sums = gram_terms + gram_block.x * kBlock * kSquareLd + gram_block.y * kBlock;
  const BlockRows d_v_rows(a.d_v, dims);
  for (int first = 0; first < V; first += kPassColumns) {
    const int width = min(kPassColumns, V - first);
    if constexpr (kDeltaRule)
      copy_operands(width, operand(d_intra, kValueLd, a.d_intra + rows_v, V, first),
                    operand(source_values, kValueLd, a.source_v + rows_v, V, first));
    else
      copy_operands(width, operand(d_intra, kValueLd, a.d_intra + rows_v, V, first),
                    operand(source_values, kValueLd, v_rows, first));
    __syncthreads();
    if (gram_warp >= 0 && gram_warp < kLowerBlocks) {
      WarpBlock gram;
      if (first == 0)
        dla::ops::kernels::clear(gram);
      else
        dla::ops::kernels::load(gram, gram_sums, kSquareLd);
      accumulate<Stored::by_row, Stored::by_row>(gram, d_intra + gram_block.x * kBlock * kValueLd, kValueLd,
                                                 source_values + gram_block.y * kBlock * kValueLd, kValueLd,
                                                 width);
      dla::ops::kernels::store(gram, gram_sums, kSquareLd, 1.f);
    }
    const int r = warp / kColumnBlocks, c = warp % kColumnBlocks;
    if (r < kRowBlocks && c * kBlock < width) {
      const int rows = r * kBlock, columns = c * kBlock;
      WarpBlock acc;
      if constexpr (kDeltaRule)
        dla::ops::kernels::load(acc, a.d_source_v + rows_v + static_cast<size_t>(rows) * V + first + columns,
                                V);
      else
        dla::ops::kernels::clear(acc);
      accumulate<Stored::by_column, Stored::by_column>(acc, read_operand + rows * kOperandLd + rows,
                                                       kOperandLd, d_intra + rows * kValueLd + columns,
                                                       kValueLd, kC - rows);
      if constexpr (kDeltaRule) {
        add_row_sums(acc, d_beta, rows, columns, [&](int i, int j, float x, float y) {
          if (j >= width) return 0.f;
          d_v_rows.store2(i, first + j, beta[i] * x, beta[i] * y);
          const float2 v = v_rows.load2(i, first + j);
          return x * v.x + y * v.y;
        });
      } else {
        for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
          if (j < width) d_v_rows.store2(i, first + j, x, y);
        });
      }
    }
    __syncthreads();
  }
  Bf16* d_queries = operands(L::kDQueries);
  Bf16* weights = operands(L::kWeights);
  Bf16* d_weights = operands(L::kDWeights);
  if constexpr (kDeltaRule)
    copy_operands(K, operand(d_queries, kWideLd, a.d_transported_q + rows_k, K),
                  operand(weights, kWideLd, a.w + rows_k, K));
  __syncthreads();
  // dΛ = G ⊙ R; dR = G ⊙ Λ (for SSD, dP, over Λ).
  for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
    const float g = j <= i ? gram_terms[i * kSquareLd + j] : 0.f;
    a.d_lam_in[pairs_at + i * kC + j] = g * reads_of_keys[i * kSquareLd + j];
    const float d_reads = g * lam[i * kSquareLd + j];
    if constexpr (kDeltaRule)
      read_operand[i * kOperandLd + j] = operand_of<Bf16>(d_reads);
    else
      lam[i * kSquareLd + j] = d_reads;
  });
  __syncthreads();

  WarpBlock held;  // dT's block (warps 3..5), then dX = Tᵀ dW (dk warps), then dk
  dla::ops::kernels::clear(held);
  float* d_pairs = lam;  // dP
  if constexpr (kDeltaRule) {
    float* d_a = reads;
    if (warp < kLowerBlocks) {
      // dP = dR Tᵀ − dQ̃ Wᵀ over Λ's place (dR and T are lower triangular: depth up to column block c).
      const int2 lower = lower_block(warp);
      const int rows = lower.x * kBlock, columns = lower.y * kBlock;
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_row, Stored::by_row>(acc, d_queries + rows * kWideLd, kWideLd,
                                                 weights + columns * kWideLd, kWideLd, K);
      negate(acc);
      accumulate<Stored::by_row, Stored::by_row>(acc, read_operand + rows * kOperandLd, kOperandLd,
                                                 inverse + columns * kOperandLd, kOperandLd,
                                                 columns + kBlock);
      dla::ops::kernels::store(acc, d_pairs + rows * kSquareLd + columns, kSquareLd, 1.f);
    } else if (warp < 2 * kLowerBlocks) {
      // dT = dT_out + Pᵀ dR: depth from row block r.
      const int2 lower = lower_block(warp - kLowerBlocks);
      const int rows = lower.x * kBlock, columns = lower.y * kBlock;
      dla::ops::kernels::load(held, a.d_t_inverse + pairs_at + rows * kC + columns, kC);
      accumulate<Stored::by_column, Stored::by_column>(held, pair_operand + rows * kOperandLd + rows,
                                                       kOperandLd, read_operand + rows * kOperandLd + columns,
                                                       kOperandLd, kC - rows);
    } else if (dk_warp) {
      // dW = dW_out − Pᵀ dQ̃.
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_column, Stored::by_column>(
          acc, pair_operand + wide_rows * kOperandLd + wide_rows, kOperandLd,
          d_queries + wide_rows * kWideLd + wide_columns, kWideLd, kC - wide_rows);
      for_each_block_pair(acc, wide_rows, wide_columns, [&](int i, int j, float x, float y) {
        const float2 d_w = *reinterpret_cast<const float2*>(a.d_w + rows_k + i * K + j);
        store_pair(d_weights + i * kWideLd + j, d_w.x - x, d_w.y - y);
      });
    }
    __syncthreads();
    if (warp >= kLowerBlocks && warp < 2 * kLowerBlocks) {
      // dT += (dW kᵀ) ⊙ (β exp(γ))_column, strictly below the diagonal (the only part dA reads).
      const int2 lower = lower_block(warp - kLowerBlocks);
      const int rows = lower.x * kBlock, columns = lower.y * kBlock;
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_row, Stored::by_row>(acc, d_weights + rows * kWideLd, kWideLd,
                                                 keys + columns * kWideLd, kWideLd, K);
      const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = rows + 16 * m + 8 * (e / 2) + g, j = columns + 8 * n + 2 * t + e % 2;
            held.c[m][n][e] = j < i ? held.c[m][n][e] + acc.c[m][n][e] * beta[j] * exp_gamma[j] : 0.f;
          }
      for_each_block_pair(held, rows, columns, [&](int i, int j, float x, float y) {
        store_pair(d_inverse + i * kOperandLd + j, x, y);
      });
    } else if (dk_warp) {
      // dX = Tᵀ dW, whose row block r starts at its diagonal: dk's term β exp(γ) ⊙ dX, and the row dots
      // ⟨dX_i, k_i⟩ that γ and β take.
      dla::ops::kernels::clear(held);
      accumulate<Stored::by_column, Stored::by_column>(
          held, inverse + wide_rows * kOperandLd + wide_rows, kOperandLd,
          d_weights + wide_rows * kWideLd + wide_columns, kWideLd, kC - wide_rows);
      add_row_sums(held, to_end_term, wide_rows, wide_columns, [&](int i, int j, float x, float y) {
        const float2 k = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(keys + i * kWideLd + j));
        return x * k.x + y * k.y;
      });
      const int lane = threadIdx.x % 32, g = lane / 4;
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = wide_rows + 16 * m + 8 * (e / 2) + g;
            held.c[m][n][e] *= beta[i] * exp_gamma[i];
          }
    }
    __syncthreads();
    // The row dots of dX, summed in to_end_term's place: γ_i gets β_i exp(γ_i) times them, β_i exp(γ_i).
    for (int i = threadIdx.x; i < kC; i += kBlockThreads) {
      const float x_terms = to_end_term[i];
      d_gamma[i] += beta[i] * exp_gamma[i] * x_terms;
      d_beta[i] += exp_gamma[i] * x_terms;
      to_end_term[i] = 0.f;
    }
    // M = Tᵀ dT, lower blocks (the only ones dA reads): depth from the larger of r and c.
    if (warp < kLowerBlocks) {
      const int2 lower = lower_block(warp);
      const int rows = lower.x * kBlock, columns = lower.y * kBlock;
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_column, Stored::by_column>(acc, inverse + rows * kOperandLd + rows, kOperandLd,
                                                       d_inverse + rows * kOperandLd + columns, kOperandLd,
                                                       kC - rows);
      for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
        store_pair(m_operand + i * kOperandLd + j, x, y);
      });
    }
    __syncthreads();
    // dA = −(M Tᵀ) strictly below the diagonal, over R's place: depth up to column block c.
    if (warp < kLowerBlocks) {
      const int2 lower = lower_block(warp);
      const int rows = lower.x * kBlock, columns = lower.y * kBlock;
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_row, Stored::by_row>(acc, m_operand + rows * kOperandLd, kOperandLd,
                                                 inverse + columns * kOperandLd, kOperandLd,
                                                 columns + kBlock);
      for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
        store_pair(d_a + i * kSquareLd + j, j < i ? -x : 0.f, j + 1 < i ? -y : 0.f);
      });
    }
  }
  // q again, for dk's product with dQKᵀ (dQ̃, W and dW are done).
  copy_operands(K, operand(queries, kWideLd, q_rows));
  __syncthreads();

  // The decayed pairs' gradients: dQK = dP ⊙ D (over P's operand), dKK = β dA ⊙ D (over k kᵀ ⊙ D); γ gets
  // each entry's dD ⊙ D at its row and minus it at its column, β the row sums of dA ⊙ (k kᵀ ⊙ D).
  {
    const int j = threadIdx.x % kC, lane = threadIdx.x % 32;
    float column_sum = 0.f;
    for (int i = threadIdx.x / kC; i < kC; i += kBlockThreads / kC) {
      const float decay = j <= i ? expf(gamma[i] - gamma[j]) : 0.f;
      const float d_p = j <= i ? d_pairs[i * kSquareLd + j] : 0.f;
      float term = j <= i ? d_p * pairs[i * kSquareLd + j] : 0.f;
      float beta_term = 0.f;
      pair_operand[i * kOperandLd + j] = operand_of<Bf16>(d_p * decay);
      if constexpr (kDeltaRule) {
        const float d_a = j < i ? reads[i * kSquareLd + j] : 0.f;
        float& kk = key_pairs[i * kSquareLd + j];
        beta_term = j < i ? d_a * kk : 0.f;
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
  // dQ̃ and dK̃ arrive for dq's and dk's elementwise terms while the last products run.
  float* staged_d_queries = terms(L::kStagedDQueries);
  float* staged_d_keys = terms(L::kStagedDKeys);
  const auto stage = [&](float* dst, const float* src) {
    dla::ops::kernels::copy_rows_async<kBlockThreads>(dst, L::kStagedLd, src + rows_k, kC, K);
  };
  stage(staged_d_queries, a.d_transported_q);
  if constexpr (kDeltaRule) {
    // dKK + dKKᵀ over dR's operand.
    for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
      read_operand[i * kOperandLd + j] =
          operand_of<Bf16>(key_pairs[i * kSquareLd + j] + key_pairs[j * kSquareLd + i]);
    });
    __syncthreads();
  }
  stage(staged_d_keys, a.d_k_to_end);
  dla::ops::kernels::commit_copies();

  // dq = dQ̃ ⊙ exp(γ) + dQK k (row block r ends at its diagonal); dk = dK̃ ⊙ exp(γ_last − γ) + dQKᵀ q
  // (+ β exp(γ) ⊙ dX + (dKK + dKKᵀ) k). Their row dots with q and k give γ's terms of q̃ and k̃.
  const BlockRows d_q_rows(a.d_q, dims), d_k_rows(a.d_k, dims);
  if (dq_warp) {
    dla::ops::kernels::clear(held);
    accumulate<Stored::by_row, Stored::by_column>(held, pair_operand + wide_rows * kOperandLd, kOperandLd,
                                                  keys + wide_columns, kWideLd, wide_rows + kBlock);
  } else if (dk_warp) {
    accumulate<Stored::by_column, Stored::by_column>(held, pair_operand + wide_rows * kOperandLd + wide_rows,
                                                     kOperandLd, queries + wide_rows * kWideLd + wide_columns,
                                                     kWideLd, kC - wide_rows);
    if constexpr (kDeltaRule)
      accumulate<Stored::by_row, Stored::by_column>(held, read_operand + wide_rows * kOperandLd, kOperandLd,
                                                    keys + wide_columns, kWideLd, kC);
  }
  dla::ops::kernels::wait_copies<0>();
  __syncthreads();
  const auto operand_pair = [](const Bf16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  };
  if (dq_warp) {
    add_row_sums(held, d_gamma, wide_rows, wide_columns, [&](int i, int j, float x, float y) {
      const float2 d_tq = *reinterpret_cast<const float2*>(staged_d_queries + i * L::kStagedLd + j);
      const float e = exp_gamma[i];
      d_q_rows.store2(i, j, x + e * d_tq.x, y + e * d_tq.y);
      const float2 q = operand_pair(queries + i * kWideLd + j);
      return e * (d_tq.x * q.x + d_tq.y * q.y);
    });
  } else if (dk_warp) {
    add_row_sums(held, to_end_term, wide_rows, wide_columns, [&](int i, int j, float x, float y) {
      const float2 d_kte = *reinterpret_cast<const float2*>(staged_d_keys + i * L::kStagedLd + j);
      const float to_end_i = to_end[i];
      d_k_rows.store2(i, j, x + to_end_i * d_kte.x, y + to_end_i * d_kte.y);
      const float2 k = operand_pair(keys + i * kWideLd + j);
      return to_end_i * (d_kte.x * k.x + d_kte.y * k.y);
    });
  }
  __syncthreads();
  // g = reverse cumsum of dγ, after γ_i loses ⟨dK̃_i, K̃_i⟩ and γ_last takes their sum and the chunk decay's.
  if (warp == 0) {
    float end_terms = 0.f;
    for (int i = static_cast<int>(threadIdx.x); i < kC; i += 32) {
      d_gamma[i] -= to_end_term[i];
      end_terms += to_end_term[i];
    }
    end_terms = warp_sum(end_terms);
    __syncwarp();
    if (threadIdx.x == 0) d_gamma[kC - 1] += end_terms + a.d_chunk_decay[chunk] * a.chunk_decay[chunk];
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

size_t intra_chunk_gradients_bf16_bytes(int64_t key_dim) {
  return key_dim == 64 ? Bf16Layout<64>::kBytes : Bf16Layout<128>::kBytes;
}

const char* intra_chunk_gradients_bf16(const IntraChunkGradientArgs& args, const IntraChunkGradientDims& dims,
                                       void* stream) {
  return chunk_products::with_chunk_kernel(dims, [&](auto delta_rule, auto key_dim) {
    constexpr int K = decltype(key_dim)::value;
    return chunk_products::launch_per_chunk(intra_chunk_gradients_bf16_kernel<decltype(delta_rule)::value, K>,
                                            args, dims, Bf16Layout<K>::kBytes / sizeof(float), stream);
  });
}

}  // namespace dla::memory::kernels
