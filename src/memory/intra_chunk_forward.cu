// CUDA kernel of the per-chunk stages' forward after prepare_chunks (intra_chunk_forward_kernel.h). One
// block of 512 threads per chunk: P = (q kᵀ) ⊙ D on and below the diagonal blocks, R = P T, R ⊙ Λ, then
// q̃ = exp(γ) ⊙ q − P W and, over passes of 128 value columns, v' = β v and intra = (R ⊙ Λ) v', each written
// straight to global memory. Each warp holds a 32 × 32 block of a product in registers (bf16 tensor cores
// for bf16 inputs, TF32 for float32); the products' depths stop where the triangular factors are zero.
#include <cuda_runtime.h>

#include "chunk_products.cuh"
#include "intra_chunk_forward_kernel.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dla's per-chunk forward kernel uses TF32 tensor cores: set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

using namespace chunk_products;

/// Shared-memory layout in bytes for operands of type T (bf16 for bf16 inputs, float32 rounded to TF32 as
/// the fragments load for float32 ones): q and k (then W), P ⊙ D, T and R ⊙ Λ as operands, Λ and −P W in
/// float32, per-row vectors. The value passes' operand takes q's and k's place.
template <class T, int K>
struct Layout {
  static constexpr int kPassColumns = 128;  // a 32 × 32 block of intra for each of 8 warps
  static constexpr int kWideLd = K + kOperandPad<T>;
  static constexpr int kSquareLd = kC + kOperandPad<T>;
  static constexpr int kValueLd = kPassColumns + kOperandPad<T>;
  static constexpr int kTermLd = K + kPad;
  static constexpr int kWide = kC * kWideLd * sizeof(T);
  static constexpr int kSquare = kC * kSquareLd * sizeof(T);
  static_assert(kC * kValueLd * sizeof(T) <= 2 * kWide, "a value pass fits q's and k's place");
  static constexpr int kQueries = 0;
  static constexpr int kKeys = kQueries + kWide;
  static constexpr int kPairs = kKeys + kWide;
  static constexpr int kInverse = kPairs + kSquare;
  static constexpr int kWeighted = kInverse + kSquare;
  static constexpr int kLam = kWeighted + kSquare;
  static constexpr int kProducts = kLam + kC * chunk_products::kSquareLd * sizeof(float);
  static constexpr int kVectors = kProducts + kC * kTermLd * sizeof(float);
  enum Vector { kGamma, kExpGamma, kBeta, kNumVectors };
  static constexpr int kBytes = kVectors + kNumVectors * kC * sizeof(float);
};

template <bool kDeltaRule, int K, class T>
__global__ void __launch_bounds__(kBlockThreads, 1)
    intra_chunk_forward_kernel(IntraChunkForwardArgs a, IntraChunkGradientDims dims) {
  using L = Layout<T, K>;
  constexpr int kWideLd = L::kWideLd, kOperandSquareLd = L::kSquareLd, kValueLd = L::kValueLd;
  constexpr int kW = L::kPassColumns, kRowBlocks = kC / kBlock, kColumnBlocks = kW / kBlock;
  constexpr int kLowerBlocks = kRowBlocks * (kRowBlocks + 1) / 2, kWideBlocks = kRowBlocks * (K / kBlock);
  static_assert(kLowerBlocks + kWideBlocks <= kBlockWarps && kRowBlocks * kColumnBlocks <= kBlockWarps);
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  T* queries = reinterpret_cast<T*>(shared + L::kQueries);    // q, then value passes of v'
  T* keys = reinterpret_cast<T*>(shared + L::kKeys);          // k, then W
  T* pairs = reinterpret_cast<T*>(shared + L::kPairs);        // P ⊙ D
  T* inverse = reinterpret_cast<T*>(shared + L::kInverse);    // T
  T* weighted = reinterpret_cast<T*>(shared + L::kWeighted);  // R ⊙ Λ
  float* lam = reinterpret_cast<float*>(shared + L::kLam);
  float* products = reinterpret_cast<float*>(shared + L::kProducts);  // P W
  T* values = queries;
  float* vectors = reinterpret_cast<float*>(shared + L::kVectors);
  float* gamma = vectors + L::kGamma * kC;
  float* exp_gamma = vectors + L::kExpGamma * kC;
  float* beta = vectors + L::kBeta * kC;

  const int V = static_cast<int>(dims.value_dim);
  const size_t chunk = blockIdx.x;
  const size_t rows_k = chunk * kC * K, rows_v = chunk * kC * V, pairs_at = chunk * kC * kC;
  const BlockRows q_rows(a.q, dims), k_rows(a.k, dims), v_rows(a.v, dims);
  const int warp = static_cast<int>(threadIdx.x / 32);

  for (int i = threadIdx.x; i < kC; i += kBlockThreads) {
    const float g = a.gamma[chunk * kC + i];
    gamma[i] = g;
    exp_gamma[i] = expf(g);
    beta[i] = kDeltaRule ? a.beta[chunk * kC + i] : 1.f;
  }
  load_chunk_operands<kDeltaRule>(a, pairs_at, q_rows, k_rows, K, kWideLd, queries, keys, kOperandSquareLd,
                                  inverse, lam);
  __syncthreads();

  // P ⊙ D = (q kᵀ) ⊙ D on and below the diagonal blocks; for SSD (R = P) also R ⊙ Λ. No product reads the
  // blocks above the diagonal, which are never written.
  if (warp < kLowerBlocks) {
    for_each_decayed_pair(warp, queries, kWideLd, keys, kWideLd, K, gamma,
                          [&](int i, int j, float x, float y) {
                            store_pair(pairs + i * kOperandSquareLd + j, x, y);
                            if constexpr (!kDeltaRule)
                              store_pair(weighted + i * kOperandSquareLd + j, x * lam[i * kSquareLd + j],
                                         y * lam[i * kSquareLd + j + 1]);
                          });
  }
  __syncthreads();
  if constexpr (kDeltaRule) {
    copy_operands(K, operand(keys, kWideLd, a.w + rows_k, K));  // k's products are done
    __syncthreads();
    // R ⊙ Λ with R = P T (row block r of P ends at its diagonal, column block c of T starts at its own) and
    // P W, on warps of their own.
    if (warp < kLowerBlocks) {
      for_each_read_pair(warp, pairs, inverse, kOperandSquareLd, [&](int i, int j, float x, float y) {
        store_pair(weighted + i * kOperandSquareLd + j, x * lam[i * kSquareLd + j],
                   y * lam[i * kSquareLd + j + 1]);
      });
    } else if (warp < kLowerBlocks + kWideBlocks) {
      const int block = warp - kLowerBlocks, rows = (block / (K / kBlock)) * kBlock,
                columns = (block % (K / kBlock)) * kBlock;
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_row, Stored::by_column>(acc, pairs + rows * kOperandSquareLd, kOperandSquareLd,
                                                    keys + columns, kWideLd, rows + kBlock);
      dla::ops::kernels::store(acc, products + rows * L::kTermLd + columns, L::kTermLd, 1.f);
    }
    __syncthreads();
  }
  // q̃ = exp(γ) ⊙ q − P W.
  copy_rows<kBlockThreads>(
      kC, K, [&](int r, int c) { return q_rows.load(r, c); },
      [&](int r, int c, float4 x) {
        float4 q = scaled(x, exp_gamma[r]);
        if constexpr (kDeltaRule) {
          const float4 p_w = load_shared4(products + r * L::kTermLd + c);
          q = make_float4(q.x - p_w.x, q.y - p_w.y, q.z - p_w.z, q.w - p_w.w);
        }
        store4(a.transported_q + rows_k + static_cast<size_t>(r) * K + c, q);
        if (a.transported_q_bf16 != nullptr)
          store4(static_cast<__nv_bfloat16*>(a.transported_q_bf16) + rows_k + static_cast<size_t>(r) * K + c,
                 q);
      });

  // Over value passes: v' = β v, and intra = (R ⊙ Λ) v' (row block r ends at depth 32(r + 1)).
  for (int first = 0; first < V; first += kW) {
    const int width = min(kW, V - first);
    copy_rows<kBlockThreads>(
        kC, width, [&](int r, int c) { return v_rows.load(r, first + c); },
        [&](int r, int c, float4 x) {
          const float4 source = scaled(x, beta[r]);
          if constexpr (kDeltaRule) {
            const size_t at = rows_v + static_cast<size_t>(r) * V + first + c;
            store4(a.source_v + at, source);
            if (a.source_v_bf16 != nullptr) store4(static_cast<__nv_bfloat16*>(a.source_v_bf16) + at, source);
          }
          store4(values + r * kValueLd + c, source);
        });
    __syncthreads();
    const int r = warp / kColumnBlocks, c = warp % kColumnBlocks;
    if (r < kRowBlocks && c * kBlock < width) {
      const int rows = r * kBlock, columns = c * kBlock;
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_row, Stored::by_column>(acc, weighted + rows * kOperandSquareLd, kOperandSquareLd,
                                                    values + columns, kValueLd, rows + kBlock);
      float* intra = a.intra + rows_v + first;
      for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
        if (j < width) store_pair(intra + static_cast<size_t>(i) * V + j, x, y);
      });
    }
    __syncthreads();
  }
}

}  // namespace

bool supports_intra_chunk_forward(const IntraChunkGradientDims& dims) {
  // float32 operands take the most room.
  return chunk_products::supports_chunk_dims(dims, Layout<float, 64>::kBytes / sizeof(float),
                                             Layout<float, 128>::kBytes / sizeof(float));
}

const char* intra_chunk_forward(const IntraChunkForwardArgs& args, const IntraChunkGradientDims& dims,
                                void* stream) {
  return chunk_products::with_chunk_kernel(dims, [&](auto delta_rule, auto key_dim) {
    constexpr bool kDeltaRule = decltype(delta_rule)::value;
    constexpr int K = decltype(key_dim)::value;
    using Bf16 = __nv_bfloat16;
    return args.q.bf16
               ? chunk_products::launch_per_chunk(intra_chunk_forward_kernel<kDeltaRule, K, Bf16>, args, dims,
                                                  Layout<Bf16, K>::kBytes / sizeof(float), stream)
               : chunk_products::launch_per_chunk(intra_chunk_forward_kernel<kDeltaRule, K, float>, args,
                                                  dims, Layout<float, K>::kBytes / sizeof(float), stream);
  });
}

}  // namespace dla::memory::kernels
