// CUDA kernels of the fused op's per-chunk stages (dla/ops/fused.h). One thread block per (chunk,
// batch·head) reads its chunk of the [B, T, H, ·] inputs in place, keeps it in shared memory and runs the
// chunk's products with each warp holding a 32 × 32 block in registers (chunk_tiles.cuh): on bf16 tensor
// cores for bf16 inputs, TF32 ones for float32 inputs:
//   chunk_prepare  γ = cumsum g, exp(γ_last), k ⊙ exp(γ_last − γ), and for the delta rule
//                  A = strict_lower(β_i (k kᵀ)_ij exp(γ_i − γ_j)), T = (I + A)⁻¹ (float32 FMAs),
//                  w = T (β exp(γ) ⊙ k), u = T (β ⊙ v); u = v for SSD
//   chunk_output   o = scale · [exp(γ) ⊙ q | (q kᵀ) ⊙ D] [S ; v_new], one product over the depth K + C
// so that none of the chunk terms between the inputs and what the state pass reads goes through global
// memory. The chunk length C and key dim K are template parameters (the instantiations are listed at
// supports_chunk_stages): fixed row lengths let the products unroll with constant shared-memory offsets.
#include <algorithm>
#include <utility>

#include "../async_copy.cuh"
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

/// Shared-memory layout of chunk_prepare, in bytes, for operands of type T: the keys, one pass of columns of
/// β exp(γ) ⊙ k or β ⊙ v, T as an operand, k kᵀ (then A) and T in float32, the per-row terms.
template <class T, int C, int K>
struct PrepareLayout {
  // Columns of w or u per pass: at C = 64 a 32 × 32 block for each of the 8 warps (bf16); float32
  // operands pass 64 at a time.
  static constexpr int kPassColumns = sizeof(T) == 2 ? 128 : 64;
  static constexpr int kKeysLd = K + kOperandPad<T>;
  static constexpr int kOperandLd = kPassColumns + kOperandPad<T>;
  static constexpr int kInverseLd = C + kOperandPad<T>;
  static constexpr int kSquareLd = C + kPad;  // float32 terms
  static constexpr int kKeys = 0;
  static constexpr int kOperand = kKeys + C * kKeysLd * sizeof(T);
  static constexpr int kInverseOperand = kOperand + C * kOperandLd * sizeof(T);
  static constexpr int kSquare = kInverseOperand + C * kInverseLd * sizeof(T);  // k kᵀ, then A
  static constexpr int kInverse = kSquare + C * kSquareLd * sizeof(float);      // T
  static constexpr int kGamma = kInverse + C * kSquareLd * sizeof(float);
  static constexpr int kBeta = kGamma + C * sizeof(float);
  static constexpr int kRowScale = kBeta + C * sizeof(float);
  static constexpr int kBytes = kRowScale + C * sizeof(float);
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

/// T = (I + A)⁻¹ with A = strict_lower(β_i (k kᵀ)_ij exp(γ_i − γ_j)) from the keys (operands in shared
/// memory), into `inverse_operand` (rows kInverseLd apart) and to a.inverse (and its bf16 copy) exact;
/// row_scale becomes β exp(γ). The block's next barrier completes it.
template <class T, int C, int K>
__device__ void form_inverse(const PrepareArgs& a, const ChunkBlock& block, const T* keys, float* square,
                             float* inverse, T* inverse_operand, const float* beta, const float* gamma,
                             float* row_scale) {
  using L = PrepareLayout<T, C, K>;
  constexpr int kRowBlocks = C / kBlock, kLowerBlocks = kRowBlocks * (kRowBlocks + 1) / 2;
  static_assert(kLowerBlocks <= kWarps);
  // k kᵀ on and below the diagonal blocks, masked and scaled into A as it leaves the registers (the inverse
  // reads only the strictly lower part).
  const int warp = threadIdx.x / 32;
  if (warp < kLowerBlocks) {
    const int2 lower = lower_block(warp);
    const int rows = lower.x * kBlock, columns = lower.y * kBlock;
    WarpBlock acc;
    dla::ops::kernels::clear(acc);
    accumulate<Stored::by_row, Stored::by_row>(acc, keys + rows * L::kKeysLd, L::kKeysLd,
                                               keys + columns * L::kKeysLd, L::kKeysLd, K);
    for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
      const float first = j < i ? beta[i] * x * expf(gamma[i] - gamma[j]) : 0.f;
      const float second = j + 1 < i ? beta[i] * y * expf(gamma[i] - gamma[j + 1]) : 0.f;
      store_pair(square + i * L::kSquareLd + j, first, second);
    });
  }
  for (int i = threadIdx.x; i < C; i += kThreads)
    row_scale[i] = beta[i] * expf(gamma[i]);
  __syncthreads();
  unit_lower_inverse<C, L::kSquareLd>(square, inverse);
  float* inverse_out = a.inverse + block.chunk * C * C;
  auto* inverse_copy = static_cast<__nv_bfloat16*>(a.copies.inverse);
  if (inverse_copy != nullptr) inverse_copy += block.chunk * C * C;
  copy_rows(
      C, C, [&](int r, int c) { return load_shared4(inverse + r * L::kSquareLd + c); },
      [&](int r, int c, float4 x) {
        store4(inverse_out + r * C + c, x);
        if (inverse_copy != nullptr) store4(inverse_copy + r * C + c, x);
        store4(inverse_operand + r * L::kInverseLd + c, x);
      });
}

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kThreads, 2) chunk_prepare_kernel(PrepareArgs a) {
  using T = OperandOf<Scalar>;
  using L = PrepareLayout<T, C, K>;
  constexpr int kW = L::kPassColumns, kRowBlocks = C / kBlock, kColumnBlocks = kW / kBlock;
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  T* keys = reinterpret_cast<T*>(shared + L::kKeys);
  T* operand = reinterpret_cast<T*>(shared + L::kOperand);
  T* inverse_operand = reinterpret_cast<T*>(shared + L::kInverseOperand);
  float* square = reinterpret_cast<float*>(shared + L::kSquare);
  float* inverse = reinterpret_cast<float*>(shared + L::kInverse);
  float* gamma = reinterpret_cast<float*>(shared + L::kGamma);
  float* beta = reinterpret_cast<float*>(shared + L::kBeta);
  float* row_scale = reinterpret_cast<float*>(shared + L::kRowScale);
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);
  const bool delta_rule = a.beta != nullptr;
  const int warp = threadIdx.x / 32;

  const ChunkRows<Scalar> k_rows(a.k, block);
  const ChunkRows<Scalar> v_rows(a.v, block);
  // The keys as operands (exact, since they are the inputs' own type) and, for the delta rule's u, the
  // first pass of v, copied as they are while the block forms T.
  const bool values_ahead = delta_rule && a.u != nullptr;
  copy_chunk_rows_async(keys, L::kKeysLd, k_rows, C, 0, K);
  if (values_ahead) copy_chunk_rows_async(operand, L::kOperandLd, v_rows, C, 0, min(kW, V));
  dla::ops::kernels::commit_copies();
  for (int i = threadIdx.x; i < C; i += kThreads) {
    const size_t token = block.token(i);
    // Padding tokens decay by nothing and write nothing, as in the LibTorch path's zero-padded chunks.
    gamma[i] = i < block.valid ? a.g[token] : 0.f;
    beta[i] = delta_rule && i < block.valid ? a.beta[token] : 0.f;
  }
  dla::ops::kernels::wait_copies<0>();
  __syncthreads();
  if (values_ahead)
    dla::ops::kernels::for_each_piece<kThreads>(min(kW, V) / 4, C, [&](int r, int c) {
      T* x = operand + r * L::kOperandLd + c;
      store4(x, scaled(load_shared4(x), beta[r]));
    });
  cumsum_in_warp(gamma, C);
  __syncthreads();
  const float gamma_last = gamma[C - 1];
  for (int i = threadIdx.x; i < C; i += kThreads) {
    a.gamma[block.chunk * C + i] = gamma[i];
    row_scale[i] = expf(gamma_last - gamma[i]);
  }
  if (threadIdx.x == 0) a.chunk_decay[block.chunk] = expf(gamma_last);
  __syncthreads();
  float* k_to_end = a.k_to_end;
  if (k_to_end != nullptr) k_to_end += block.chunk * C * K;
  auto* k_to_end_copy = static_cast<__nv_bfloat16*>(a.copies.k_to_end);
  if (k_to_end_copy != nullptr) k_to_end_copy += block.chunk * C * K;
  copy_rows(
      C, K, [&](int r, int c) { return load_shared4(keys + r * L::kKeysLd + c); },
      [&](int r, int c, float4 x) {
        const float4 to_end = scaled(x, row_scale[r]);
        if (k_to_end != nullptr) store4(k_to_end + r * K + c, to_end);
        if (k_to_end_copy != nullptr) store4(k_to_end_copy + r * K + c, to_end);
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
        [&](int r, int c, float4 x) { store4(inverse_operand + r * L::kInverseLd + c, x); });
  } else {
    form_inverse<T, C, K>(a, block, keys, square, inverse, inverse_operand, beta, gamma, row_scale);
  }
  __syncthreads();

  // w = T (β exp(γ) ⊙ k), then u = T (β ⊙ v), kW columns at a time, each warp a 32 × 32 block. T is lower
  // triangular: row block r needs depth 32(r + 1).
  const auto multiply_by_inverse = [&](float* out, __nv_bfloat16* out_copy, int cols, int first_column) {
    const int width = min(kW, cols - first_column);
    const int r = warp / kColumnBlocks, c = warp % kColumnBlocks;
    if (r >= kRowBlocks || c * kBlock >= width) return;
    const int rows = r * kBlock, columns = c * kBlock;
    WarpBlock acc;
    dla::ops::kernels::clear(acc);
    accumulate<Stored::by_row, Stored::by_column>(acc, inverse_operand + rows * L::kInverseLd, L::kInverseLd,
                                                  operand + columns, L::kOperandLd, rows + kBlock);
    for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
      if (j >= width) return;
      if (out != nullptr) store_pair(out + i * cols + first_column + j, x, y);
      if (out_copy != nullptr) store_pair(out_copy + i * cols + first_column + j, x, y);
    });
  };
  // u first: its first pass's operand β ⊙ v is in place already.
  if (a.u != nullptr) {
    for (int first_column = 0; first_column < V; first_column += kW) {
      if (first_column > 0) {
        copy_rows(
            C, min(kW, V - first_column), [&](int r, int c) { return v_rows.load(r, first_column + c); },
            [&](int r, int c, float4 x) { store4(operand + r * L::kOperandLd + c, scaled(x, beta[r])); });
        __syncthreads();
      }
      multiply_by_inverse(a.u + block.chunk * C * V, nullptr, V, first_column);
      __syncthreads();
    }
  }
  float* w = a.w;
  if (w != nullptr) w += block.chunk * C * K;
  auto* w_copy = static_cast<__nv_bfloat16*>(a.copies.w);
  if (w_copy != nullptr) w_copy += block.chunk * C * K;
  for (int first_column = 0; first_column < K; first_column += kW) {
    const int width = min(kW, K - first_column);
    copy_rows(
        C, width, [&](int r, int c) { return load_shared4(keys + r * L::kKeysLd + first_column + c); },
        [&](int r, int c, float4 x) { store4(operand + r * L::kOperandLd + c, scaled(x, row_scale[r])); });
    __syncthreads();
    multiply_by_inverse(w, w_copy, K, first_column);
    __syncthreads();
  }
}

// ---- chunk_output ----

/// Shared-memory layout of chunk_output, in bytes, for operands of type T: the read operand
/// [exp(γ) ⊙ q | P ⊙ D] of C rows and K + C columns, then one region that holds k while P is formed and
/// then the [S ; v_new] rows of one pass over the value columns.
template <class T, int C, int K>
struct OutputLayout {
  // Value columns per pass: at C = 64 a 32 × 32 block of the output for each of the 8 warps (bf16);
  // float32 operands take twice the room and pass 64 at a time.
  static constexpr int kPassColumns = sizeof(T) == 2 ? 128 : 64;
  static constexpr int kReadsLd = K + C + kOperandPad<T>;
  static constexpr int kKeysLd = K + kOperandPad<T>;
  static constexpr int kValueLd = kPassColumns + kOperandPad<T>;
  static constexpr int kReads = 0;
  static constexpr int kRegion = kReads + C * kReadsLd * sizeof(T);
  static constexpr int kRegionBytes = larger(C * kKeysLd, (K + C) * kValueLd) * sizeof(T);
  static constexpr int kGamma = kRegion + kRegionBytes;
  static constexpr int kBytes = kGamma + C * sizeof(float);
};

struct OutputArgs {
  TokenRows q, k;
  const float* gamma;
  const void *states, *v_new;  // of the operand type
  void* out;                   // contiguous [B, T, H, V]
  float scale;
  int tokens, heads, value_dim;
};

/// The rows of S and v_new each thread of chunk_output keeps in flight per value pass: all of them in one
/// round of loads where that is at most 12; more would spill.
template <int C, int K, int Columns>
constexpr int kOutputRowsInFlight = (K + C) * (Columns / 4) / kThreads < 12
                                        ? larger(1, (K + C) * (Columns / 4) / kThreads)
                                        : 12;

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kThreads, 2) chunk_output_kernel(OutputArgs a) {
  using T = OperandOf<Scalar>;
  using L = OutputLayout<T, C, K>;
  constexpr int kLd = L::kReadsLd, kValueLd = L::kValueLd, kW = L::kPassColumns;
  constexpr int kRowBlocks = C / kBlock, kColumnBlocks = kW / kBlock;
  constexpr int kLowerBlocks = kRowBlocks * (kRowBlocks + 1) / 2;
  static_assert(kLowerBlocks <= kWarps);
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  T* reads = reinterpret_cast<T*>(shared + L::kReads);
  T* region = reinterpret_cast<T*>(shared + L::kRegion);
  float* gamma = reinterpret_cast<float*>(shared + L::kGamma);
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);
  const int warp = threadIdx.x / 32;

  // q and k arrive as they are while γ loads; P's columns start as zeros (the blocks above the diagonal stay
  // so).
  copy_chunk_rows_async(reads, kLd, ChunkRows<Scalar>(a.q, block), C, 0, K);
  copy_chunk_rows_async(region, L::kKeysLd, ChunkRows<Scalar>(a.k, block), C, 0, K);
  dla::ops::kernels::commit_copies();
  for_each_entry(C, C, [&](int i, int j) { reads[i * kLd + K + j] = operand_of<T>(0.f); });
  for (int i = threadIdx.x; i < C; i += kThreads)
    gamma[i] = a.gamma[block.chunk * C + i];
  dla::ops::kernels::wait_copies<0>();
  __syncthreads();
  // P = q kᵀ on and below the diagonal blocks, stored as (P ⊙ D) into the columns after q.
  if (warp < kLowerBlocks) {
    for_each_decayed_pair(warp, reads, kLd, region, L::kKeysLd, K, gamma,
                          [&](int i, int j, float x, float y) { store_pair(reads + i * kLd + K + j, x, y); });
  }
  __syncthreads();
  copy_rows(
      C, K, [&](int r, int c) { return load_shared4(reads + r * kLd + c); },
      [&](int r, int c, float4 x) { store4(reads + r * kLd + c, scaled(x, expf(gamma[r]))); });
  __syncthreads();

  Scalar* out = static_cast<Scalar*>(a.out);
  for (int first_column = 0; first_column < V; first_column += kW) {
    const int width = min(kW, V - first_column);
    // S's K rows and v_new's C rows, stacked as the region's K + C rows, in one round of loads.
    const T* states = static_cast<const T*>(a.states) + block.chunk * K * V + first_column;
    const T* v_new = static_cast<const T*>(a.v_new) + block.chunk * C * V + first_column;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      // Already operands (the bf16 state pass writes them): copied as they are, all pieces in flight at once.
      dla::ops::kernels::copy_tile_async<kThreads>(region, kValueLd, states, V, K, width);
      dla::ops::kernels::copy_tile_async<kThreads>(region + K * kValueLd, kValueLd, v_new, V, C, width);
      dla::ops::kernels::commit_copies();
      dla::ops::kernels::wait_copies<0>();
    } else {
      copy_rows<kThreads, kOutputRowsInFlight<C, K, kW>>(
          K + C, width,
          [&](int r, int c) { return load4(r < K ? states + r * V + c : v_new + (r - K) * V + c); },
          [&](int r, int c, float4 x) { store4(region + r * kValueLd + c, x); });
    }
    __syncthreads();
    // Row block r reads q̂ against S, then P's columns up to its diagonal against v_new.
    const int r = warp / kColumnBlocks, c = warp % kColumnBlocks;
    if (r < kRowBlocks && c * kBlock < width) {
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_row, Stored::by_column>(acc, reads + r * kBlock * kLd, kLd, region + c * kBlock,
                                                    kValueLd, K + (r + 1) * kBlock);
      for_each_block_pair(acc, r * kBlock, c * kBlock, [&](int i, int j, float x, float y) {
        if (i < block.valid && j < width)
          store_pair(out + block.token(i) * V + first_column + j, a.scale * x, a.scale * y);
      });
    }
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
    const size_t output_bytes = d.bf16 ? OutputLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes
                                       : OutputLayout<OperandOf<float>, C, K>::kBytes;
    const size_t prepare_bytes = d.bf16 ? PrepareLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes
                                        : PrepareLayout<OperandOf<float>, C, K>::kBytes;
    fits = prepare_bytes <= limit && output_bytes <= limit;
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
    // launch counts shared memory in floats; both layouts' sizes are multiples of 16 bytes.
    constexpr int kBf16Floats = PrepareLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes / 4;
    constexpr int kFloatFloats = PrepareLayout<OperandOf<float>, C, K>::kBytes / 4;
    error = dims.bf16 ? launch(chunk_prepare_kernel<__nv_bfloat16, C, K>, args, kBf16Floats, dims, stream)
                      : launch(chunk_prepare_kernel<float, C, K>, args, kFloatFloats, dims, stream);
  });
  return error;
}

const char* chunk_output(const TokenRows& q, const TokenRows& k, const float* gamma, const void* states,
                         const void* v_new, double scale, void* out, const ChunkStageDims& dims,
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
    // launch counts shared memory in floats; both layouts' sizes are multiples of 16 bytes.
    constexpr int kBf16Floats = OutputLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes / 4;
    constexpr int kFloatFloats = OutputLayout<OperandOf<float>, C, K>::kBytes / 4;
    error = dims.bf16 ? launch(chunk_output_kernel<__nv_bfloat16, C, K>, args, kBf16Floats, dims, stream)
                      : launch(chunk_output_kernel<float, C, K>, args, kFloatFloats, dims, stream);
  });
  return error;
}

}  // namespace dla::ops::fused::kernels
