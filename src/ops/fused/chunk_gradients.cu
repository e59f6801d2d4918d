// CUDA kernels of the fused op's backward around the state pass (dla/ops/fused.h), one thread block per
// (chunk, batch·head) as in chunk_stages.cu:
//   chunk_value_gradient  before the state pass backward: Δ's gradient from the chunk's own outputs,
//                         scale · ((q kᵀ) ⊙ D)ᵀ dO, and the pass's operands q̂ = scale · exp(γ) ⊙ q and dO
//                         as chunks of the operand type; tensor cores on warp blocks (chunk_tiles.cuh)
//   chunk_gradients       after it: dq, dk, dv, dg and dβ of the chunk from dΔ and dS_next, every term of
//                         docs/ops/fused.md in one block, none of them through global memory; each warp
//                         holds 32 × 32 blocks of its products in registers (../warp_block.cuh), on bf16
//                         tensor cores for bf16 inputs and TF32 ones for float32 inputs
// Both copy their inputs into shared memory by cp.async, every copy of a phase in flight at once.
// chunk_gradients folds the row factors of the terms into the operands it accumulates, and uses
// W S = U − Δ: the WY part's dA = −(Tᵀ dW) Wᵀ − (Tᵀ dΔ) Uᵀ becomes −(Tᵀ dΔ) Δᵀ (dW = −dΔ Sᵀ), so neither
// W nor U is read.
#include <algorithm>
#include <type_traits>
#include <utility>

#include "chunk_tiles.cuh"

namespace dla::ops::fused::kernels {
namespace {

using namespace tiles;
using dla::ops::kernels::max_shared_bytes;

// chunk_gradients runs 16 warps per block: each holds up to two 32 × 32 blocks of its products, and its
// phases wait on shared-memory rounds and barriers, which more warps overlap.
constexpr int kGradientThreads = 512;
constexpr int kGradientWarps = kGradientThreads / 32;

/// The row at `token` (ChunkBlock::token) of a contiguous [B, T, H, D] output as Scalar.
template <class Scalar>
__device__ Scalar* output_row(void* out, size_t token, int dim) {
  return static_cast<Scalar*>(out) + token * dim;
}

// ---- chunk_value_gradient ----

/// Shared-memory layout of chunk_value_gradient, in bytes, for operands of type T: q and k, P ⊙ D, one pass
/// of dO's columns, γ.
template <class T, int C, int K>
struct ValueGradientLayout {
  // Value columns per pass: at C = 64 a 32 × 32 block of the output for each of the 8 warps (bf16);
  // float32 operands pass 64 at a time.
  static constexpr int kPassColumns = sizeof(T) == 2 ? 128 : 64;
  static constexpr int kKeysLd = K + kOperandPad<T>;
  static constexpr int kSquareLd = C + kOperandPad<T>;
  static constexpr int kValueLd = kPassColumns + kOperandPad<T>;
  static constexpr int kQueries = 0;
  static constexpr int kKeys = kQueries + C * kKeysLd * sizeof(T);
  static constexpr int kPairs = kKeys + C * kKeysLd * sizeof(T);
  static constexpr int kGrads = kPairs + C * kSquareLd * sizeof(T);
  static constexpr int kGamma = kGrads + C * kValueLd * sizeof(T);
  static constexpr int kBytes = kGamma + C * sizeof(float);
};

struct ValueGradientArgs {
  TokenRows q, k, d_out;
  const float* gamma;
  void *q_read, *d_out_chunks;  // of the operand type: bf16 for bf16 inputs, else float32
  float* d_v_new_intra;
  float scale;
  int tokens, heads, value_dim;
};

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kThreads, 2) chunk_value_gradient_kernel(ValueGradientArgs a) {
  using T = OperandOf<Scalar>;
  using L = ValueGradientLayout<T, C, K>;
  constexpr int kW = L::kPassColumns, kRowBlocks = C / kBlock, kColumnBlocks = kW / kBlock;
  constexpr int kLowerBlocks = kRowBlocks * (kRowBlocks + 1) / 2;
  constexpr int kKeysLd = L::kKeysLd, kSquareLd = L::kSquareLd, kValueLd = L::kValueLd;
  static_assert(kLowerBlocks <= kWarps);
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  T* queries = reinterpret_cast<T*>(shared + L::kQueries);
  T* keys = reinterpret_cast<T*>(shared + L::kKeys);
  T* pairs = reinterpret_cast<T*>(shared + L::kPairs);
  T* grads = reinterpret_cast<T*>(shared + L::kGrads);
  float* gamma = reinterpret_cast<float*>(shared + L::kGamma);
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);
  const int warp = threadIdx.x / 32;

  // q, k and the first pass of dO arrive as they are while γ loads; q̂ and dO's copy leave from shared
  // memory. P ⊙ D starts as zeros (the blocks above the diagonal stay so).
  const ChunkRows<Scalar> d_out_rows(a.d_out, block);
  copy_chunk_rows_async(queries, kKeysLd, ChunkRows<Scalar>(a.q, block), C, 0, K);
  copy_chunk_rows_async(keys, kKeysLd, ChunkRows<Scalar>(a.k, block), C, 0, K);
  copy_chunk_rows_async(grads, kValueLd, d_out_rows, C, 0, min(kW, V));
  dla::ops::kernels::commit_copies();
  for (int i = threadIdx.x; i < C; i += kThreads)
    gamma[i] = a.gamma[block.chunk * C + i];
  for_each_entry(C, C, [&](int i, int j) { pairs[i * kSquareLd + j] = operand_of<T>(0.f); });
  dla::ops::kernels::wait_copies<0>();
  __syncthreads();
  T* q_read = static_cast<T*>(a.q_read) + block.chunk * C * K;
  dla::ops::kernels::for_each_piece<kThreads>(K / 4, C, [&](int r, int c) {
    store4(q_read + r * K + c, scaled(load_shared4(queries + r * kKeysLd + c), a.scale * expf(gamma[r])));
  });
  // P ⊙ D = (q kᵀ) ⊙ D on and below the diagonal blocks.
  if (warp < kLowerBlocks) {
    for_each_decayed_pair(
        warp, queries, kKeysLd, keys, kKeysLd, K, gamma,
        [&](int i, int j, float x, float y) { store_pair(pairs + i * kSquareLd + j, x, y); });
  }
  __syncthreads();

  T* d_out_chunks = static_cast<T*>(a.d_out_chunks) + block.chunk * C * V;
  float* d_v_new_intra = a.d_v_new_intra + block.chunk * C * V;
  for (int first_column = 0; first_column < V; first_column += kW) {
    const int width = min(kW, V - first_column);
    if (first_column > 0) {
      copy_chunk_rows_async(grads, kValueLd, d_out_rows, C, first_column, width);
      dla::ops::kernels::commit_copies();
      dla::ops::kernels::wait_copies<0>();
      __syncthreads();
    }
    dla::ops::kernels::for_each_piece<kThreads>(width / 4, C, [&](int r, int c) {
      store4(d_out_chunks + r * V + first_column + c, load_shared4(grads + r * kValueLd + c));
    });
    // scale · (P ⊙ D)ᵀ dO: row block r of the transpose is zero left of its diagonal block.
    const int r = warp / kColumnBlocks, c = warp % kColumnBlocks;
    if (r < kRowBlocks && c * kBlock < width) {
      const int rows = r * kBlock, columns = c * kBlock;
      WarpBlock acc;
      dla::ops::kernels::clear(acc);
      accumulate<Stored::by_column, Stored::by_column>(acc, pairs + rows * kSquareLd + rows, kSquareLd,
                                                       grads + rows * kValueLd + columns, kValueLd, C - rows);
      for_each_block_pair(acc, rows, columns, [&](int i, int j, float x, float y) {
        if (j < width) store_pair(d_v_new_intra + i * V + first_column + j, a.scale * x, a.scale * y);
      });
    }
    __syncthreads();
  }
}

// ---- chunk_gradients ----

/// Shared-memory layout of chunk_gradients, in bytes, for operands of type T. k and the C × C sums over the
/// value columns stay at the front throughout; the value-column passes and the key-side stage after them
/// share the region behind them; the per-row terms follow. Operand rows are padded by 16 bytes, so that the
/// eight rows of a fragment's 8 × 8 block fall on distinct banks; float32 terms read entry by entry by 4
/// floats.
template <class T, int C, int K>
struct GradientLayout {
  // Value columns per pass: two passes of 64 at V = 128 with bf16 operands; float32 ones take twice the
  // room and pass 32 at a time.
  static constexpr int kPassColumns = sizeof(T) == 2 ? 64 : 32;
  static constexpr int kPad = kOperandPad<T>;
  static constexpr int kKeysLd = K + kPad, kSquareLd = C + kPad, kValueLd = kPassColumns + kPad;
  static constexpr int kTermLd = kPassColumns + 4, kSquareTermLd = C + 4;  // float32 terms
  static constexpr int kKeyRows = C * kKeysLd * sizeof(T), kSquareRows = C * kSquareLd * sizeof(T);
  static constexpr int kValueRows = C * kValueLd * sizeof(T), kStateRows = K * kValueLd * sizeof(T);
  static constexpr int kTermRows = C * kTermLd * sizeof(float),
                       kSquareTerms = C * kSquareTermLd * sizeof(float);
  static constexpr int kKeys = 0;
  static constexpr int kDPairs = kKeys + kKeyRows;      // dP / scale, then dP ⊙ D
  static constexpr int kGram = kDPairs + kSquareTerms;  // d(βV) Δᵀ, then dKK
  static constexpr int kRegion = kGram + kSquareTerms;
  // Value-column passes: T, six C-row operands, three C-row float32 terms, S and dS_next. The buffers before
  // dO are not read by a pass's last products, so that q for the key-side stage arrives there meanwhile.
  static constexpr int kInverse = kRegion;
  static constexpr int kDVNew = kInverse + kSquareRows;         // dΔ
  static constexpr int kValues = kDVNew + kValueRows;           // v
  static constexpr int kDVb = kValues + kValueRows;             // d(βV), float32
  static constexpr int kKeysStates = kDVb + kTermRows;          // k S
  static constexpr int kKeysDStates = kKeysStates + kTermRows;  // k dS_next
  static constexpr int kDOut = kKeysDStates + kTermRows;        // dO
  static constexpr int kVNew = kDOut + kValueRows;              // Δ
  static constexpr int kVNewToEnd = kVNew + kValueRows;         // exp(γ_last − γ) ⊙ Δ
  static constexpr int kDVbOperand = kVNewToEnd + kValueRows;   // d(βV) = Tᵀ dΔ
  static constexpr int kDVbRead = kDVbOperand + kValueRows;     // −β exp(γ) ⊙ d(βV)
  static constexpr int kStates = kDVbRead + kValueRows;
  static constexpr int kDStates = kStates + kStateRows;
  static constexpr int kValuePassEnd = kDStates + kStateRows;
  // Key-side stage: q, two more float32 C × C terms and two C × C operands.
  static constexpr int kQueries = kRegion;
  static_assert(kQueries + kKeyRows <= kDOut);
  static constexpr int kPairs = kQueries + kKeyRows;              // q kᵀ
  static constexpr int kKeyPairs = kPairs + kSquareTerms;         // k kᵀ
  static constexpr int kDPairOperand = kKeyPairs + kSquareTerms;  // dP ⊙ D
  static constexpr int kKeySum = kDPairOperand + kSquareRows;     // dKK + dKKᵀ
  static constexpr int kKeyStageEnd = kKeySum + kSquareRows;
  // Per-row terms, float32.
  static constexpr int kRowTerms = larger(kValuePassEnd, kKeyStageEnd);
  enum Row { kGamma, kBeta, kExpGamma, kToEnd, kDGamma, kDBeta, kColumnSums, kRowCount };
  static constexpr int kTotals = kRowTerms + kRowCount * C * 4;  // ⟨S, dS_next⟩, Σ_i ⟨dK̃_i, K̃_i⟩
  static constexpr int kBytes = kTotals + 4 * 4;
};

struct GradientArgs {
  TokenRows q, k, v;
  const float *beta, *gamma, *inverse;
  // Of the operand type, as chunk_value_gradient and the state pass write them for these inputs.
  const void *states, *v_new, *d_out, *d_states_next, *d_v_new;
  void *d_q, *d_k, *d_v;
  float *d_g, *d_beta;
  float scale;
  int tokens, heads, value_dim;
};

__device__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

template <class Scalar, int C, int K>
__global__ void __launch_bounds__(kGradientThreads, 1) chunk_gradients_kernel(GradientArgs a) {
  using T = OperandOf<Scalar>;
  using L = GradientLayout<T, C, K>;
  constexpr int kW = L::kPassColumns;
  constexpr int kRowBlocks = C / kBlock, kKeyBlocks = K / kBlock;
  constexpr int kKeyBlockCount = kRowBlocks * kKeyBlocks;  // of dq, and of dk
  constexpr int kLowerBlocks = kRowBlocks * (kRowBlocks + 1) / 2;
  static_assert(C % kBlock == 0 && K % kBlock == 0 && 2 * kKeyBlockCount <= kGradientWarps);
  // The C × C accumulators (dP's and the Gram term's lower blocks) go to warps without a key block where
  // there are enough, else to the dq warps, whose passes have one product where dk's have two.
  constexpr int kSquareWarp =
      2 * kKeyBlockCount + 2 * kLowerBlocks <= kGradientWarps ? 2 * kKeyBlockCount : 0;
  static_assert(kSquareWarp + 2 * kLowerBlocks <= kGradientWarps);
  constexpr int kKeysLd = L::kKeysLd, kSquareLd = L::kSquareLd, kValueLd = L::kValueLd;
  constexpr int kTermLd = L::kTermLd, kSquareTermLd = L::kSquareTermLd;
  extern __shared__ float4 shared_vectors[];
  char* shared = reinterpret_cast<char*>(shared_vectors);
  const auto operands = [&](int at) { return reinterpret_cast<T*>(shared + at); };
  const auto terms = [&](int at) { return reinterpret_cast<float*>(shared + at); };
  T* keys = operands(L::kKeys);
  float* row_terms = terms(L::kRowTerms);
  float* gamma = row_terms + L::kGamma * C;
  float* beta = row_terms + L::kBeta * C;
  float* exp_gamma = row_terms + L::kExpGamma * C;
  float* to_end = row_terms + L::kToEnd * C;
  float* d_gamma = row_terms + L::kDGamma * C;
  float* d_beta = row_terms + L::kDBeta * C;
  float* column_sums = row_terms + L::kColumnSums * C;
  float* totals = terms(L::kTotals);
  const int V = a.value_dim;
  const ChunkBlock block(a.tokens, a.heads, C);
  const bool delta_rule = a.beta != nullptr;
  const int warp = threadIdx.x / 32;

  // The warp's blocks: of dq (key_role 0) or dk (1), and of dP / scale or the Gram term (square_role 0, 1).
  const int key_role = warp < kKeyBlockCount ? 0 : warp < 2 * kKeyBlockCount ? 1 : -1;
  const int key_block = warp % kKeyBlockCount;
  const int key_rows = (key_block / kKeyBlocks) * kBlock, key_columns = (key_block % kKeyBlocks) * kBlock;
  const int square_index = warp - kSquareWarp;
  const int square_role = square_index < 0 || square_index >= 2 * kLowerBlocks ? -1
                          : square_index < kLowerBlocks                        ? 0
                          : delta_rule                                         ? 1
                                                                               : -1;
  const int2 square = lower_block(square_index % kLowerBlocks);
  const int square_rows = square.x * kBlock, square_columns = square.y * kBlock;

  for (int i = threadIdx.x; i < C; i += kGradientThreads) {
    gamma[i] = a.gamma[block.chunk * C + i];
    const size_t token = block.token(i);
    beta[i] = delta_rule && i < block.valid ? a.beta[token] : 0.f;
    d_gamma[i] = 0.f;
    d_beta[i] = 0.f;
    column_sums[i] = 0.f;
  }
  if (threadIdx.x < 4) totals[threadIdx.x] = 0.f;
  T* inverse = operands(L::kInverse);
  T* d_v_new = operands(L::kDVNew);
  T* values = operands(L::kValues);
  float* d_vb = terms(L::kDVb);
  float* keys_states = terms(L::kKeysStates);
  float* keys_d_states = terms(L::kKeysDStates);
  T* d_out = operands(L::kDOut);
  T* v_new = operands(L::kVNew);
  T* v_new_to_end = operands(L::kVNewToEnd);
  T* d_vb_operand = operands(L::kDVbOperand);
  T* d_vb_read = operands(L::kDVbRead);
  T* states = operands(L::kStates);
  T* d_states = operands(L::kDStates);
  T* queries = operands(L::kQueries);
  const ChunkRows<Scalar> q_rows(a.q, block), k_rows(a.k, block), v_rows(a.v, block);
  const T* d_out_chunk = static_cast<const T*>(a.d_out) + block.chunk * C * V;
  const T* v_new_chunk = static_cast<const T*>(a.v_new) + block.chunk * C * V;
  const T* d_v_new_chunk = static_cast<const T*>(a.d_v_new) + block.chunk * C * V;
  const T* states_chunk = static_cast<const T*>(a.states) + block.chunk * K * V;
  const T* d_states_chunk = static_cast<const T*>(a.d_states_next) + block.chunk * K * V;
  // A pass's operands as they are in global memory, every copy of the pass in flight at once; the operands
  // with row factors are made from them in shared memory.
  const auto start_pass_copies = [&](int first_column) {
    const int width = min(kW, V - first_column);
    dla::ops::kernels::copy_tile_async<kGradientThreads>(d_out, kValueLd, d_out_chunk + first_column, V, C,
                                                         width);
    dla::ops::kernels::copy_tile_async<kGradientThreads>(v_new, kValueLd, v_new_chunk + first_column, V, C,
                                                         width);
    dla::ops::kernels::copy_tile_async<kGradientThreads>(d_v_new, kValueLd, d_v_new_chunk + first_column, V,
                                                         C, width);
    dla::ops::kernels::copy_tile_async<kGradientThreads>(states, kValueLd, states_chunk + first_column, V, K,
                                                         width);
    dla::ops::kernels::copy_tile_async<kGradientThreads>(d_states, kValueLd, d_states_chunk + first_column, V,
                                                         K, width);
    if (delta_rule) copy_chunk_rows_async<kGradientThreads>(values, kValueLd, v_rows, C, first_column, width);
    dla::ops::kernels::commit_copies();
  };
  copy_chunk_rows_async<kGradientThreads>(keys, kKeysLd, k_rows, C, 0, K);
  start_pass_copies(0);
  if (delta_rule) {
    const float* chunk_inverse = a.inverse + block.chunk * C * C;
    copy_rows<kGradientThreads>(
        C, C, [&](int r, int c) { return load4(chunk_inverse + r * C + c); },
        [&](int r, int c, float4 x) { store4(inverse + r * kSquareLd + c, x); });
  }
  __syncthreads();
  for (int i = threadIdx.x; i < C; i += kGradientThreads) {
    exp_gamma[i] = expf(gamma[i]);
    to_end[i] = expf(gamma[C - 1] - gamma[i]);
  }

  // ---- value-column passes: every product whose depth is V ----
  // Accumulated over the value columns, with their row factors folded into the left operands where a
  // block's terms differ in them:
  //   dq      dO Sᵀ, times scale exp(γ) after the passes: dq̂ · scale exp(γ), q's gradient through the state
  //           read
  //   dk      exp(γ_last − γ) ⊙ Δ dS_nextᵀ (dK̃'s share of dk) − β exp(γ) ⊙ d(βV) Sᵀ (w's operand's)
  //   dP      dO Δᵀ = dP / scale;   Gram  d(βV) Δᵀ = −dA below the diagonal
  // The row dots γ and β need of the two dk terms come from k S and k dS_next instead:
  //   ⟨dK̃_i, K̃_i⟩ = exp(γ_last − γ_i) ⟨Δ_i, (k dS_next)_i⟩
  //   exp(γ_i) ⟨d(β exp(γ) K)_i, k_i⟩ = −exp(γ_i) ⟨d(βV)_i, (k S)_i⟩
  // A warp keeps its dq or dk block in registers; the C × C sums, touched once per pass, add up in shared
  // memory, which leaves the registers of a third block to the products of each pass.
  WarpBlock key_acc;
  dla::ops::kernels::clear(key_acc);
  float* d_pair_terms = terms(L::kDPairs);
  float* gram_terms = terms(L::kGram);
  float state_dot = 0.f, to_end_dot = 0.f;  // this thread's shares of the two totals
  for (int first_column = 0; first_column < V; first_column += kW) {
    const int width = min(kW, V - first_column);  // a multiple of 16
    if (first_column > 0) start_pass_copies(first_column);
    dla::ops::kernels::wait_copies<0>();
    __syncthreads();
    // [C, width] products, one 32 × 32 block per warp: k dS_next, and for the delta rule k S and
    // d(βV) = Tᵀ dΔ (Tᵀ is upper triangular: row block r starts at depth 32r).
    {
      constexpr int kColumnBlocks = kW / kBlock, kBlocksPerProduct = kRowBlocks * kColumnBlocks;
      const int product = warp / kBlocksPerProduct, r = (warp % kBlocksPerProduct) / kColumnBlocks,
                c = warp % kColumnBlocks;
      if (product < (delta_rule ? 3 : 1) && c * kBlock < width) {
        WarpBlock acc;
        dla::ops::kernels::clear(acc);
        const int rows = r * kBlock, columns = c * kBlock;
        float* out = product == 0 ? keys_d_states : product == 1 ? keys_states : d_vb;
        if (product < 2)
          accumulate<Stored::by_row, Stored::by_column>(
              acc, keys + rows * kKeysLd, kKeysLd, (product == 0 ? d_states : states) + columns, kValueLd, K);
        else
          accumulate<Stored::by_column, Stored::by_column>(acc, inverse + rows * kSquareLd + rows, kSquareLd,
                                                           d_v_new + rows * kValueLd + columns, kValueLd,
                                                           C - rows);
        dla::ops::kernels::store(acc, out + rows * kTermLd + columns, kTermLd, 1.f);
      }
    }
    dla::ops::kernels::for_each_piece<kGradientThreads>(width / 4, K, [&](int r, int c) {
      state_dot += dot4(load_shared4(states + r * kValueLd + c), load_shared4(d_states + r * kValueLd + c));
    });
    __syncthreads();
    // ⟨dK̃_i, K̃_i⟩ leaves γ_i and reaches γ_last. For the delta rule also dV = β ⊙ d(βV), dβ_i +=
    // ⟨d(βV)_i, v_i⟩ and the w operand's exp(γ_i) ⟨d(β exp(γ) K)_i, k_i⟩, which γ_i gets times β_i; for
    // SSD dV = dΔ. A row's lanes sum their parts first: one update per row.
    for_each_row_vector<kGradientThreads, C>(kW, [&](int r, int c, bool leader) {
      constexpr int kLanes = kW / 4;
      const bool inside = c < width;
      float end_dot = 0.f;
      if (inside) {
        const float4 delta = load_shared4(v_new + r * kValueLd + c);
        store4(v_new_to_end + r * kValueLd + c, scaled(delta, to_end[r]));
        end_dot = dot4(delta, load_shared4(keys_d_states + r * kTermLd + c));
      }
      end_dot = group_sum(end_dot, kLanes);
      float gamma_part = -to_end[r] * end_dot;
      if (leader) to_end_dot += to_end[r] * end_dot;
      if (delta_rule) {
        float kb_dot = 0.f, beta_part = 0.f;
        if (inside) {
          const float4 x = load_shared4(d_vb + r * kTermLd + c);
          if (r < block.valid) {
            store4(output_row<Scalar>(a.d_v, block.token(r), V) + first_column + c, scaled(x, beta[r]));
            kb_dot = -exp_gamma[r] * dot4(x, load_shared4(keys_states + r * kTermLd + c));
            beta_part = dot4(x, load_shared4(values + r * kValueLd + c)) + kb_dot;
          }
          store4(d_vb_read + r * kValueLd + c, scaled(x, -beta[r] * exp_gamma[r]));
          store4(d_vb_operand + r * kValueLd + c, x);
        }
        kb_dot = group_sum(kb_dot, kLanes);
        beta_part = group_sum(beta_part, kLanes);
        gamma_part += beta[r] * kb_dot;
        if (leader) d_beta[r] += beta_part;
      } else if (inside && r < block.valid) {
        store4(output_row<Scalar>(a.d_v, block.token(r), V) + first_column + c,
               load_shared4(d_v_new + r * kValueLd + c));
      }
      if (leader) d_gamma[r] += gamma_part;
    });
    __syncthreads();
    // After the last pass q arrives over the buffers this phase does not read.
    if (first_column + kW >= V) copy_chunk_rows_async<kGradientThreads>(queries, kKeysLd, q_rows, C, 0, K);
    // The products that share S (dq's and w's operand's), dS_next (dK̃'s) or Δ (dP's and the Gram term's)
    // as B.
    if (key_role == 0)
      accumulate<Stored::by_row, Stored::by_row>(key_acc, d_out + key_rows * kValueLd, kValueLd,
                                                 states + key_columns * kValueLd, kValueLd, width);
    if (key_role == 1) {
      accumulate<Stored::by_row, Stored::by_row>(key_acc, v_new_to_end + key_rows * kValueLd, kValueLd,
                                                 d_states + key_columns * kValueLd, kValueLd, width);
      if (delta_rule)
        accumulate<Stored::by_row, Stored::by_row>(key_acc, d_vb_read + key_rows * kValueLd, kValueLd,
                                                   states + key_columns * kValueLd, kValueLd, width);
    }
    if (square_role >= 0) {
      float* sums =
          (square_role == 0 ? d_pair_terms : gram_terms) + square_rows * kSquareTermLd + square_columns;
      WarpBlock acc;
      if (first_column == 0)
        dla::ops::kernels::clear(acc);
      else
        dla::ops::kernels::load(acc, sums, kSquareTermLd);
      accumulate<Stored::by_row, Stored::by_row>(
          acc, (square_role == 0 ? d_out : d_vb_operand) + square_rows * kValueLd, kValueLd,
          v_new + square_columns * kValueLd, kValueLd, width);
      dla::ops::kernels::store(acc, sums, kSquareTermLd, 1.f);
    }
    dla::ops::kernels::commit_copies();
    dla::ops::kernels::wait_copies<0>();
    __syncthreads();
  }
  state_dot = warp_sum(state_dot);
  to_end_dot = warp_sum(to_end_dot);
  if (threadIdx.x % 32 == 0) {
    atomicAdd(totals, state_dot);
    atomicAdd(totals + 1, to_end_dot);
  }
  if (key_role == 0)
    dla::ops::kernels::for_each_lane_pair([&](int m, int n, int h, int row, int) {
      const float factor = a.scale * exp_gamma[key_rows + row];
      key_acc.c[m][n][2 * h] *= factor;
      key_acc.c[m][n][2 * h + 1] *= factor;
    });

  // ---- key-side stage ----
  float* pairs = terms(L::kPairs);
  float* key_pairs = terms(L::kKeyPairs);
  T* d_pair_operand = operands(L::kDPairOperand);
  T* key_sum = operands(L::kKeySum);
  // q kᵀ and k kᵀ on and below the diagonal blocks; dγ_i += ⟨dq̂_i, q̂_i⟩ from the dq blocks as they are.
  if (warp < (delta_rule ? 2 : 1) * kLowerBlocks) {
    const int2 lower = lower_block(warp % kLowerBlocks);
    const int rows = lower.x * kBlock, columns = lower.y * kBlock;
    WarpBlock acc;
    dla::ops::kernels::clear(acc);
    accumulate<Stored::by_row, Stored::by_row>(acc, (warp < kLowerBlocks ? queries : keys) + rows * kKeysLd,
                                               kKeysLd, keys + columns * kKeysLd, kKeysLd, K);
    dla::ops::kernels::store(acc, (warp < kLowerBlocks ? pairs : key_pairs) + rows * kSquareTermLd + columns,
                             kSquareTermLd, 1.f);
  }
  if (key_role == 0) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = key_rows + 16 * m + 8 * h + g;
        float dot = 0.f;
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const T* q = queries + row * kKeysLd + key_columns + 8 * n + 2 * t;
          dot += key_acc.c[m][n][2 * h] * static_cast<float>(q[0]) +
                 key_acc.c[m][n][2 * h + 1] * static_cast<float>(q[1]);
        }
        dot = group_sum(dot, 4);
        if (t == 0) atomicAdd(d_gamma + row, dot);
      }
  }
  __syncthreads();
  // The C × C terms, entry by entry; a warp's lanes share a row. Blocks above the diagonal were never
  // written: only entries on or below it are read.
  {
    constexpr int kRowsPerPass = kGradientThreads / C;
    const int j = threadIdx.x % C;
    float column = 0.f;
    for (int i = threadIdx.x / C; i < C; i += kRowsPerPass) {
      const bool on_or_below = j <= i, below = j < i;
      const float decay = on_or_below ? expf(gamma[i] - gamma[j]) : 0.f;
      const float d_pair = on_or_below ? a.scale * d_pair_terms[i * kSquareTermLd + j] : 0.f;
      float pair_gradient = on_or_below ? d_pair * pairs[i * kSquareTermLd + j] * decay : 0.f;
      d_pair_terms[i * kSquareTermLd + j] = d_pair * decay;  // dP ⊙ D
      float beta_gradient = 0.f;
      if (delta_rule) {
        const float key_pair = below ? key_pairs[i * kSquareTermLd + j] * decay : 0.f;
        const float d_a = below ? -gram_terms[i * kSquareTermLd + j] : 0.f;
        pair_gradient += d_a * beta[i] * key_pair;
        beta_gradient = d_a * key_pair;
        gram_terms[i * kSquareTermLd + j] = beta[i] * d_a * decay;  // dKK
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
    d_pair_operand[i * kSquareLd + j] = operand_of<T>(d_pair_terms[i * kSquareTermLd + j]);
    if (delta_rule)
      key_sum[i * kSquareLd + j] =
          operand_of<T>(gram_terms[i * kSquareTermLd + j] + gram_terms[j * kSquareTermLd + i]);
  });
  for (int i = threadIdx.x; i < C; i += kGradientThreads)
    d_gamma[i] -= column_sums[i];
  __syncthreads();

  // dq += (dP ⊙ D) k, whose row block r ends at its diagonal; dk += (dKK + dKKᵀ) k + (dP ⊙ D)ᵀ q, the
  // transpose's row block r starting at its diagonal.
  if (key_role == 0)
    accumulate<Stored::by_row, Stored::by_column>(key_acc, d_pair_operand + key_rows * kSquareLd, kSquareLd,
                                                  keys + key_columns, kKeysLd, key_rows + kBlock);
  if (key_role == 1) {
    if (delta_rule)
      accumulate<Stored::by_row, Stored::by_column>(key_acc, key_sum + key_rows * kSquareLd, kSquareLd,
                                                    keys + key_columns, kKeysLd, C);
    accumulate<Stored::by_column, Stored::by_column>(
        key_acc, d_pair_operand + key_rows * kSquareLd + key_rows, kSquareLd,
        queries + key_rows * kKeysLd + key_columns, kKeysLd, C - key_rows);
  }
  if (key_role >= 0) {
    void* out = key_role == 0 ? a.d_q : a.d_k;
    for_each_block_pair(key_acc, key_rows, key_columns, [&](int row, int column, float x, float y) {
      if (row < block.valid) store_pair(output_row<Scalar>(out, block.token(row), K) + column, x, y);
    });
  }
  if (threadIdx.x == 0) d_gamma[C - 1] += totals[1] + expf(gamma[C - 1]) * totals[0];
  __syncwarp();
  reverse_cumsum_in_warp(d_gamma, C);
  __syncthreads();
  for (int i = threadIdx.x; i < block.valid; i += kGradientThreads) {
    const size_t token = block.token(i);
    a.d_g[token] = d_gamma[i];
    if (delta_rule) a.d_beta[token] = d_beta[i];
  }
}

// ---- launches ----

/// The (C, K) pairs the backward kernels are instantiated for: chunk_gradients gives each 32 × 32 block of dq
/// and dk a warp of its 16, which K = 256 would outnumber, and its shared memory would not fit.
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
    const size_t bytes = d.bf16 ? std::max(ValueGradientLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes,
                                           GradientLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes)
                                : std::max(ValueGradientLayout<OperandOf<float>, C, K>::kBytes,
                                           GradientLayout<OperandOf<float>, C, K>::kBytes);
    fits = bytes <= limit;
  });
  return instantiated && fits;
}

const char* chunk_value_gradient(const TokenRows& q, const TokenRows& k, const TokenRows& d_out,
                                 const float* gamma, double scale, void* q_read, void* d_out_chunks,
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
    // launch counts shared memory in floats; both layouts' sizes are multiples of 16 bytes.
    constexpr int kBf16Floats = ValueGradientLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes / 4;
    constexpr int kFloatFloats = ValueGradientLayout<OperandOf<float>, C, K>::kBytes / 4;
    error = dims.bf16
                ? launch(chunk_value_gradient_kernel<__nv_bfloat16, C, K>, args, kBf16Floats, dims, stream)
                : launch(chunk_value_gradient_kernel<float, C, K>, args, kFloatFloats, dims, stream);
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
    // launch counts shared memory in floats; every layout's size is a multiple of 16 bytes.
    constexpr int kBf16Floats = GradientLayout<OperandOf<__nv_bfloat16>, C, K>::kBytes / 4;
    constexpr int kFloatFloats = GradientLayout<OperandOf<float>, C, K>::kBytes / 4;
    error = dims.bf16 ? launch<kGradientThreads>(chunk_gradients_kernel<__nv_bfloat16, C, K>, args,
                                                 kBf16Floats, dims, stream)
                      : launch<kGradientThreads>(chunk_gradients_kernel<float, C, K>, args, kFloatFloats,
                                                 dims, stream);
  });
  return error;
}

}  // namespace dla::ops::fused::kernels
