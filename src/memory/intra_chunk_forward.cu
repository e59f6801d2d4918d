// CUDA kernel of the per-chunk stages' forward after prepare_chunks (intra_chunk_forward_kernel.h). One
// block of 512 threads per chunk: P = (q kᵀ) ⊙ D on and below the diagonal tiles, R = P T, R ⊙ Λ, then
// q̃ = exp(γ) ⊙ q − P W and, over value tiles of 64 columns, v' = β v and intra = (R ⊙ Λ) v', each written
// straight to global memory. The products' depths stop where the triangular factors are zero.
#include <cuda_runtime.h>

#include "chunk_products.cuh"
#include "intra_chunk_forward_kernel.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's per-chunk forward kernel uses TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using namespace chunk_products;

/// Shared-memory layout in floats: two C × K slots, three C × C slots (a value tile is one more), per-row
/// vectors.
template <int K>
struct Layout {
  static constexpr int kWideLd = K + kPad;
  static constexpr int kWide = kC * kWideLd;
  static constexpr int kSquare = kC * kSquareLd;
  static_assert(kValueLd == kSquareLd, "a value tile and a C × C square share a size");
  static constexpr int kVectors = 2 * kWide + 4 * kSquare;
  enum Vector { kGamma, kExpGamma, kBeta, kNumVectors };
  static constexpr int kFloats = kVectors + kNumVectors * kC;
};

template <bool kDeltaRule, int K>
__global__ void __launch_bounds__(kBlockThreads, 1)
    intra_chunk_forward_kernel(IntraChunkForwardArgs a, IntraChunkGradientDims dims) {
  using L = Layout<K>;
  constexpr int kWideLd = L::kWideLd;
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  float* queries = shared;                 // q, then P W
  float* keys = queries + L::kWide;        // k, then W
  float* pairs = keys + L::kWide;          // P
  float* inverse = pairs + L::kSquare;     // T
  float* weighted = inverse + L::kSquare;  // Λ, then R ⊙ Λ
  float* values = weighted + L::kSquare;   // R, then value tiles of v'
  float* vectors = shared + L::kVectors;
  float* gamma = vectors + L::kGamma * kC;
  float* exp_gamma = vectors + L::kExpGamma * kC;
  float* beta = vectors + L::kBeta * kC;

  const int V = static_cast<int>(dims.value_dim);
  const size_t chunk = blockIdx.x;
  const size_t rows_k = chunk * kC * K, rows_v = chunk * kC * V, pairs_at = chunk * kC * kC;
  const BlockRows q_rows(a.q, dims), k_rows(a.k, dims), v_rows(a.v, dims);

  for (int i = threadIdx.x; i < kC; i += kBlockThreads) {
    const float g = a.gamma[chunk * kC + i];
    gamma[i] = g;
    exp_gamma[i] = expf(g);
    beta[i] = kDeltaRule ? a.beta[chunk * kC + i] : 1.f;
  }
  load_chunk_operands<kDeltaRule>(a, pairs_at, q_rows, k_rows, K, kWideLd, queries, keys, inverse, weighted);
  __syncthreads();

  for_each_lower_tile([&](int r, int c) {
    Accumulator acc;
    wmma::fill_fragment(acc, 0.f);
    multiply(acc, rows_of<kWideLd>(queries), transpose_of<kWideLd>(keys), r, c, 0, K);
    store_shared(pairs + r * kTile * kSquareLd + c * kTile, acc, kSquareLd);
  });
  __syncthreads();
  // The tiles above the diagonal were never written: zeros there, not products with what they held.
  for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
    float& p = pairs[i * kSquareLd + j];
    p = j <= i ? wmma::__float_to_tf32(p * expf(gamma[i] - gamma[j])) : 0.f;
  });
  if constexpr (kDeltaRule)
    copy_operands(K, operand(keys, kWideLd, a.w + rows_k, K));  // k's products are done
  __syncthreads();

  // R ⊙ Λ, with R = P T.
  const float* reads = pairs;
  if constexpr (kDeltaRule) {
    lower_product(values, pairs, inverse);
    __syncthreads();
    reads = values;
  }
  for_each_entry<kBlockThreads>(kC, kC, [&](int i, int j) {
    float& x = weighted[i * kSquareLd + j];
    x = wmma::__float_to_tf32(reads[i * kSquareLd + j] * x);
  });
  // q̃'s product −P W over q's slot (q's products are done); row tile r of P ends at depth (r + 1)·16.
  if constexpr (kDeltaRule) {
    for_each_tile<kBlockThreads>(kRowTiles, K / kTile, [&](int r, int c) {
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      multiply(acc, rows_of<kSquareLd>(pairs), rows_of<kWideLd>(keys), r, c, 0, (r + 1) * kTile);
      store_shared(queries + r * kTile * kWideLd + c * kTile, acc, kWideLd);
    });
  }
  __syncthreads();
  copy_rows<kBlockThreads>(
      kC, K, [&](int r, int c) { return q_rows.load(r, c); },
      [&](int r, int c, float4 x) {
        float4 q = scaled(x, exp_gamma[r]);
        if constexpr (kDeltaRule) {
          const float4 p_w = *reinterpret_cast<const float4*>(queries + r * kWideLd + c);
          q = make_float4(q.x - p_w.x, q.y - p_w.y, q.z - p_w.z, q.w - p_w.w);
        }
        store4(a.transported_q + rows_k + static_cast<size_t>(r) * K + c, q);
        if (a.transported_q_bf16 != nullptr)
          store4(static_cast<__nv_bfloat16*>(a.transported_q_bf16) + rows_k + static_cast<size_t>(r) * K + c,
                 q);
      });

  // Over value tiles: v' = β v, and intra = (R ⊙ Λ) v' (lower triangular: row tile r ends at (r + 1)·16).
  for (int first = 0; first < V; first += kValueTile) {
    const int width = min(kValueTile, V - first);
    copy_rows<kBlockThreads>(
        kC, width, [&](int r, int c) { return v_rows.load(r, first + c); },
        [&](int r, int c, float4 x) {
          const float4 source = scaled(x, beta[r]);
          if constexpr (kDeltaRule) {
            const size_t at = rows_v + static_cast<size_t>(r) * V + first + c;
            store4(a.source_v + at, source);
            if (a.source_v_bf16 != nullptr) store4(static_cast<__nv_bfloat16*>(a.source_v_bf16) + at, source);
          }
          store4(values + r * kValueLd + c, tf32(source));
        });
    __syncthreads();
    for_each_tile<kBlockThreads>(kRowTiles, width / kTile, [&](int r, int c) {
      Accumulator acc;
      wmma::fill_fragment(acc, 0.f);
      multiply(acc, rows_of<kSquareLd>(weighted), rows_of<kValueLd>(values), r, c, 0, (r + 1) * kTile);
      wmma::store_matrix_sync(a.intra + rows_v + r * kTile * V + first + c * kTile, acc, V,
                              wmma::mem_row_major);
    });
    __syncthreads();
  }
}

}  // namespace

bool supports_intra_chunk_forward(const IntraChunkGradientDims& dims) {
  return chunk_products::supports_chunk_dims(dims, Layout<64>::kFloats, Layout<128>::kFloats);
}

const char* intra_chunk_forward(const IntraChunkForwardArgs& args, const IntraChunkGradientDims& dims,
                                void* stream) {
  return chunk_products::with_chunk_kernel(dims, [&](auto delta_rule, auto key_dim) {
    return chunk_products::launch_per_chunk(
        intra_chunk_forward_kernel<decltype(delta_rule)::value, decltype(key_dim)::value>, args, dims,
        Layout<decltype(key_dim)::value>::kFloats, stream);
  });
}

}  // namespace dla::memory::kernels
