// CUDA kernels of the fused op's per-chunk stages (dla/ops/fused.h). One thread block per (chunk,
// batch·head) reads its chunk of the [B, T, H, ·] inputs in place, keeps it in shared memory and runs the
// chunk's products on TF32 tensor cores (WMMA m16n16k8, float32 accumulators):
//   chunk_prepare  γ = cumsum g, exp(γ_last), k ⊙ exp(γ_last − γ), and for the delta rule
//                  A = strict_lower(β_i (k kᵀ)_ij exp(γ_i − γ_j)), T = (I + A)⁻¹ (exact float32),
//                  w = T (β exp(γ) ⊙ k), u = T (β ⊙ v); u = v for SSD
//   chunk_output   o = scale · [exp(γ) ⊙ q | (q kᵀ) ⊙ D] [S ; v_new], one product over the depth K + C
// so that none of the chunk terms between the inputs and what the state pass reads goes through global
// memory.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "../kernel_scalars.cuh"
#include "../tf32_fragments.cuh"
#include "kernels.h"

namespace dla::ops::fused::kernels {
namespace {

using namespace nvcuda;
using dla::ops::kernels::from_float;
using dla::ops::kernels::round_to_tf32;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // WMMA tile edge
constexpr int kStep = 8;   // WMMA depth of one TF32 product
// Shared rows are padded so that the WMMA fragment loads hit 32 distinct banks: rows read as A or as a
// column-major B by 4 floats (row length ≡ 4 mod 32), rows read as a row-major B by 8 (≡ 8 mod 32).
constexpr int kPad = 4;
constexpr int kRowMajorBPad = 8;
constexpr int kMaxChunk = kThreads / 4;  // the inverse gives each column four threads
constexpr int kValueTile = 64;           // output columns per pass of chunk_output
constexpr int kTilesPerWarp = (kMaxChunk / kTile) * (kValueTile / kTile) / kWarps;
constexpr int kInFlight = 4;  // vector loads each thread keeps in flight

using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, kStep, float>;
using OperandA = wmma::fragment<wmma::matrix_a, kTile, kTile, kStep, wmma::precision::tf32, wmma::row_major>;
template <class Layout>
using OperandB = wmma::fragment<wmma::matrix_b, kTile, kTile, kStep, wmma::precision::tf32, Layout>;

/// acc = A B over `depth` (a multiple of 8), A 16 × depth row-major (rows a_ld apart). Row-major B is
/// B(i, j) = b[i·b_ld + j]; column-major B is B(i, j) = b[i + j·b_ld], e.g. the transpose of a row-major
/// block.
template <class BLayout>
__device__ void product(Accumulator& acc, const float* a, int a_ld, const float* b, int b_ld, int depth) {
  constexpr bool kRowMajor = std::is_same_v<BLayout, wmma::row_major>;
  wmma::fill_fragment(acc, 0.f);
  for (int j = 0; j < depth; j += kStep) {
    OperandA a_fragment;
    OperandB<BLayout> b_fragment;
    wmma::load_matrix_sync(a_fragment, a + j, a_ld);
    wmma::load_matrix_sync(b_fragment, kRowMajor ? b + j * b_ld : b + j, b_ld);
    round_to_tf32(a_fragment);
    round_to_tf32(b_fragment);
    wmma::mma_sync(acc, a_fragment, b_fragment, acc);
  }
}

// ---- copies ----

__device__ float4 load4(const float* p) {
  return __ldg(reinterpret_cast<const float4*>(p));
}

__device__ float4 load4(const __nv_bfloat16* p) {
  const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
  const float2 low = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 high = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(low.x, low.y, high.x, high.y);
}

__device__ void store4(float* p, float4 x) {
  *reinterpret_cast<float4*>(p) = x;
}

__device__ void store4(__nv_bfloat16* p, float4 x) {
  const __nv_bfloat162 low = __floats2bfloat162_rn(x.x, x.y);
  const __nv_bfloat162 high = __floats2bfloat162_rn(x.z, x.w);
  uint2 raw;
  raw.x = *reinterpret_cast<const unsigned*>(&low);
  raw.y = *reinterpret_cast<const unsigned*>(&high);
  *reinterpret_cast<uint2*>(p) = raw;
}

__device__ float4 scaled(float4 x, float s) {
  return make_float4(s * x.x, s * x.y, s * x.z, s * x.w);
}

/// For every row r < rows and every fourth column c < cols (a multiple of 4, at most 4·kThreads):
/// sink(r, c, source(r, c)), keeping kInFlight loads per thread in flight. A thread keeps one column and
/// walks the rows, so that no index is divided per element.
template <class Source, class Sink>
__device__ void copy_rows(int rows, int cols, Source source, Sink sink) {
  const int per_row = cols / 4, rows_per_pass = kThreads / per_row;
  const int c = 4 * (threadIdx.x % per_row), first_row = threadIdx.x / per_row;
  if (first_row >= rows_per_pass) return;
  for (int base = first_row; base < rows; base += rows_per_pass * kInFlight) {
    float4 values[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * rows_per_pass < rows) values[u] = source(base + u * rows_per_pass, c);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (base + u * rows_per_pass < rows) sink(base + u * rows_per_pass, c, values[u]);
    }
  }
}

/// f(i, j) for every entry of a rows × cols block (cols at most kThreads), one column per thread.
template <class F>
__device__ void for_each_entry(int rows, int cols, F f) {
  const int rows_per_pass = kThreads / cols;
  const int j = threadIdx.x % cols, first_row = threadIdx.x / cols;
  if (first_row >= rows_per_pass) return;
  for (int i = first_row; i < rows; i += rows_per_pass)
    f(i, j);
}

/// The chunk of one head of a [B, T, H, D] input: row r is token first + r, `valid` rows exist.
template <class Scalar>
struct ChunkRows {
  const Scalar* first_row;
  int64_t token_stride;
  int valid;

  __device__ ChunkRows(const TokenRows& rows, int b, int h, int first, int valid_rows)
      : first_row(static_cast<const Scalar*>(rows.data) + b * rows.batch + first * rows.token +
                  h * rows.head),
        token_stride(rows.token),
        valid(valid_rows) {}

  /// Columns [c, c + 4) of row r as float32, zeros past the last token.
  __device__ float4 load(int r, int c) const {
    return r < valid ? load4(first_row + r * token_stride + c) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
};

/// dst[r][c] (rows dst_ld apart) = row_scale[r] · src[r][c] for r < rows, c < cols (a multiple of 4);
/// row_scale null means 1.
template <class Scalar>
__device__ void load_chunk(float* dst, int dst_ld, const ChunkRows<Scalar>& src, int rows, int cols,
                           const float* row_scale) {
  copy_rows(
      rows, cols, [&](int r, int c) { return src.load(r, c); },
      [&](int r, int c, float4 x) {
        store4(dst + r * dst_ld + c, row_scale != nullptr ? scaled(x, row_scale[r]) : x);
      });
}

/// dst (rows dst_ld apart) = `cols` columns from first_column of a row-major global matrix with rows
/// src_ld floats apart.
__device__ void load_block(float* dst, int dst_ld, const float* __restrict__ src, int src_ld, int rows,
                           int cols, int first_column) {
  copy_rows(
      rows, cols,
      [&](int r, int c) { return load4(src + static_cast<size_t>(r) * src_ld + first_column + c); },
      [&](int r, int c, float4 x) { store4(dst + r * dst_ld + c, x); });
}

/// A [rows, cols] row-major global block = src (rows src_ld apart), each row scaled by row_scale[r].
__device__ void store_block(float* dst, const float* src, int src_ld, int rows, int cols,
                            const float* row_scale) {
  copy_rows(
      rows, cols, [&](int r, int c) { return *reinterpret_cast<const float4*>(src + r * src_ld + c); },
      [&](int r, int c, float4 x) {
        store4(dst + static_cast<size_t>(r) * cols + c, row_scale != nullptr ? scaled(x, row_scale[r]) : x);
      });
}

// ---- per-block steps ----

/// In place: the chunk-local inclusive cumsum of gamma[0, C), by one warp.
__device__ void cumsum_in_warp(float* gamma, int C) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  float carry = 0.f;
  for (int base = 0; base < C; base += 32) {
    float x = base + lane < C ? gamma[base + lane] : 0.f;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const float y = __shfl_up_sync(0xffffffffu, x, offset);
      if (lane >= offset) x += y;
    }
    if (base + lane < C) gamma[base + lane] = carry + x;
    carry += __shfl_sync(0xffffffffu, x, 31);
  }
}

/// t = (I + a)⁻¹ from the strictly lower part of a (C × C, rows ld apart), exact float32, by forward
/// substitution: column j is t_ij = [i = j] − Σ_{j ≤ l < i} a_il t_lj, so a column needs only itself. Four
/// lanes of one warp share a column, each summing every fourth l. C is a multiple of 16, at most kMaxChunk,
/// so a warp's eight columns are either all in range or all past it.
__device__ void unit_lower_inverse(const float* a, float* t, int ld, int C) {
  const int j = threadIdx.x / 4, part = threadIdx.x % 4;
  if (j >= C) return;
  for (int i = 0; i < C; ++i) {
    float sum = 0.f;
#pragma unroll 4
    for (int l = j + part; l < i; l += 4)
      sum += a[i * ld + l] * t[l * ld + j];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (part == 0) t[i * ld + j] = (i == j ? 1.f : 0.f) - sum;
    __syncwarp();
  }
}

// ---- chunk_prepare ----

/// Shared-memory layout of chunk_prepare, in floats. Every buffer the tensor cores read starts 32-byte
/// aligned: C is a multiple of 16 and the padded row lengths multiples of 4.
struct PrepareLayout {
  int chunk_size, key_dim, value_dim;

  __host__ __device__ int keys_ld() const { return key_dim + kPad; }
  __host__ __device__ int operand_ld() const {
    return (key_dim > value_dim ? key_dim : value_dim) + kRowMajorBPad;
  }
  __host__ __device__ int square_ld() const { return chunk_size + kPad; }

  __host__ __device__ int keys() const { return 0; }  // k
  __host__ __device__ int operand() const {           // β exp(γ) ⊙ k, then β ⊙ v
    return keys() + chunk_size * keys_ld();
  }
  __host__ __device__ int square() const { return operand() + chunk_size * operand_ld(); }  // k kᵀ, then A
  __host__ __device__ int inverse() const { return square() + chunk_size * square_ld(); }
  __host__ __device__ int gamma() const { return inverse() + chunk_size * square_ld(); }
  __host__ __device__ int beta() const { return gamma() + chunk_size; }
  __host__ __device__ int row_scale() const { return beta() + chunk_size; }
  __host__ __device__ int total() const { return row_scale() + chunk_size; }
};

struct PrepareArgs {
  TokenRows k, v;
  const float* g;
  const float* beta;  // null for SSD
  float *gamma, *k_to_end, *chunk_decay, *w, *inverse, *u;
  int tokens, heads;
};

template <class Scalar>
__global__ void __launch_bounds__(kThreads, 2) chunk_prepare_kernel(PrepareArgs a, PrepareLayout l) {
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  const int C = l.chunk_size, K = l.key_dim, V = l.value_dim;
  const int m = blockIdx.x, bh = blockIdx.y;
  const int b = bh / a.heads, h = bh % a.heads;
  const int first = m * C, valid = min(C, a.tokens - first);
  const size_t chunk = static_cast<size_t>(bh) * gridDim.x + m;
  float* keys = shared + l.keys();
  float* operand = shared + l.operand();
  float* square = shared + l.square();
  float* inverse = shared + l.inverse();
  float* gamma = shared + l.gamma();
  float* beta = shared + l.beta();
  float* row_scale = shared + l.row_scale();
  const bool delta_rule = a.beta != nullptr;

  const ChunkRows<Scalar> k_rows(a.k, b, h, first, valid);
  const ChunkRows<Scalar> v_rows(a.v, b, h, first, valid);
  load_chunk(keys, l.keys_ld(), k_rows, C, K, nullptr);
  for (int i = threadIdx.x; i < C; i += kThreads) {
    const size_t token = (static_cast<size_t>(b) * a.tokens + first + i) * a.heads + h;
    // Padding tokens decay by nothing and write nothing, as in the LibTorch path's zero-padded chunks.
    gamma[i] = i < valid ? a.g[token] : 0.f;
    beta[i] = delta_rule && i < valid ? a.beta[token] : 0.f;
  }
  __syncthreads();
  cumsum_in_warp(gamma, C);
  __syncthreads();
  const float gamma_last = gamma[C - 1];
  for (int i = threadIdx.x; i < C; i += kThreads) {
    a.gamma[chunk * C + i] = gamma[i];
    row_scale[i] = expf(gamma_last - gamma[i]);
  }
  if (threadIdx.x == 0) a.chunk_decay[chunk] = expf(gamma_last);
  __syncthreads();
  store_block(a.k_to_end + chunk * C * K, keys, l.keys_ld(), C, K, row_scale);
  if (!delta_rule) {
    float* u = a.u + chunk * C * V;
    copy_rows(
        C, V, [&](int r, int c) { return v_rows.load(r, c); },
        [&](int r, int c, float4 x) { store4(u + r * V + c, x); });
    return;
  }

  // k kᵀ on and below the diagonal tiles: A keeps only the strictly lower part.
  const int warp = threadIdx.x / 32;
  const int square_tiles = C / kTile;
  for (int tile = warp; tile < square_tiles * square_tiles; tile += kWarps) {
    const int r = tile / square_tiles, c = tile % square_tiles;
    if (c > r) continue;
    Accumulator acc;
    product<wmma::col_major>(acc, keys + r * kTile * l.keys_ld(), l.keys_ld(), keys + c * kTile * l.keys_ld(),
                             l.keys_ld(), K);
    wmma::store_matrix_sync(square + r * kTile * l.square_ld() + c * kTile, acc, l.square_ld(),
                            wmma::mem_row_major);
  }
  __syncthreads();
  for_each_entry(C, C, [&](int i, int j) {
    float& entry = square[i * l.square_ld() + j];
    entry = j < i ? beta[i] * entry * expf(gamma[i] - gamma[j]) : 0.f;
  });
  for (int i = threadIdx.x; i < C; i += kThreads)
    row_scale[i] = beta[i] * expf(gamma[i]);
  __syncthreads();
  unit_lower_inverse(square, inverse, l.square_ld(), C);
  copy_rows(
      C, K, [&](int r, int c) { return *reinterpret_cast<const float4*>(keys + r * l.keys_ld() + c); },
      [&](int r, int c, float4 x) { store4(operand + r * l.operand_ld() + c, scaled(x, row_scale[r])); });
  __syncthreads();
  store_block(a.inverse + chunk * C * C, inverse, l.square_ld(), C, C, nullptr);

  // w = T (β exp(γ) ⊙ k), then u = T (β ⊙ v). T is lower triangular: row tile r needs depth (r + 1)·16.
  const auto multiply_by_inverse = [&](float* out, int cols) {
    const int col_tiles = cols / kTile;
    for (int tile = warp; tile < square_tiles * col_tiles; tile += kWarps) {
      const int r = tile / col_tiles, c = tile % col_tiles;
      Accumulator acc;
      product<wmma::row_major>(acc, inverse + r * kTile * l.square_ld(), l.square_ld(), operand + c * kTile,
                               l.operand_ld(), (r + 1) * kTile);
      wmma::store_matrix_sync(out + r * kTile * cols + c * kTile, acc, cols, wmma::mem_row_major);
    }
  };
  multiply_by_inverse(a.w + chunk * C * K, K);
  __syncthreads();
  load_chunk(operand, l.operand_ld(), v_rows, C, V, beta);
  __syncthreads();
  multiply_by_inverse(a.u + chunk * C * V, V);
}

// ---- chunk_output ----

/// Shared-memory layout of chunk_output, in floats: the read operand [exp(γ) ⊙ q | P] of C rows and
/// K + C columns, then one region that holds k while P is formed, then the [S ; v_new] columns of one
/// value tile, then that tile's output.
struct OutputLayout {
  int chunk_size, key_dim, value_dim;

  __host__ __device__ int reads_ld() const { return key_dim + chunk_size + kPad; }
  __host__ __device__ int keys_ld() const { return key_dim + kPad; }
  __host__ __device__ int values_ld() const { return kValueTile + kRowMajorBPad; }

  __host__ __device__ int reads() const { return 0; }
  __host__ __device__ int region() const { return reads() + chunk_size * reads_ld(); }
  __host__ __device__ int region_floats() const {
    const int keys = chunk_size * keys_ld(), values = (key_dim + chunk_size) * values_ld();
    return keys > values ? keys : values;
  }
  __host__ __device__ int gamma() const { return region() + region_floats(); }
  __host__ __device__ int total() const { return gamma() + chunk_size; }
};

struct OutputArgs {
  TokenRows q, k;
  const float *gamma, *states, *v_new;
  void* out;  // contiguous [B, T, H, V]
  float scale;
  int tokens, heads;
};

template <class Scalar>
__global__ void __launch_bounds__(kThreads, 2) chunk_output_kernel(OutputArgs a, OutputLayout l) {
  extern __shared__ float4 shared_vectors[];
  float* shared = reinterpret_cast<float*>(shared_vectors);
  const int C = l.chunk_size, K = l.key_dim, V = l.value_dim;
  const int m = blockIdx.x, bh = blockIdx.y;
  const int b = bh / a.heads, h = bh % a.heads;
  const int first = m * C, valid = min(C, a.tokens - first);
  const size_t chunk = static_cast<size_t>(bh) * gridDim.x + m;
  const int warp = threadIdx.x / 32;
  float* reads = shared + l.reads();
  float* region = shared + l.region();
  float* gamma = shared + l.gamma();
  const int ld = l.reads_ld();

  load_chunk(reads, ld, ChunkRows<Scalar>(a.q, b, h, first, valid), C, K, nullptr);
  load_chunk(region, l.keys_ld(), ChunkRows<Scalar>(a.k, b, h, first, valid), C, K, nullptr);
  for (int i = threadIdx.x; i < C; i += kThreads)
    gamma[i] = a.gamma[chunk * C + i];
  __syncthreads();
  // P = q kᵀ into the columns after q, on and below the diagonal tiles.
  const int square_tiles = C / kTile;
  for (int tile = warp; tile < square_tiles * square_tiles; tile += kWarps) {
    const int r = tile / square_tiles, c = tile % square_tiles;
    if (c > r) continue;
    Accumulator acc;
    product<wmma::col_major>(acc, reads + r * kTile * ld, ld, region + c * kTile * l.keys_ld(), l.keys_ld(),
                             K);
    wmma::store_matrix_sync(reads + r * kTile * ld + K + c * kTile, acc, ld, wmma::mem_row_major);
  }
  __syncthreads();
  for_each_entry(C, C, [&](int i, int j) {
    float& entry = reads[i * ld + K + j];
    entry = j <= i ? entry * expf(gamma[i] - gamma[j]) : 0.f;
  });
  copy_rows(
      C, K, [&](int r, int c) { return *reinterpret_cast<const float4*>(reads + r * ld + c); },
      [&](int r, int c, float4 x) { store4(reads + r * ld + c, scaled(x, expf(gamma[r]))); });
  __syncthreads();

  Scalar* out = static_cast<Scalar*>(a.out);
  const int values_ld = l.values_ld();
  for (int first_column = 0; first_column < V; first_column += kValueTile) {
    const int width = min(kValueTile, V - first_column);
    load_block(region, values_ld, a.states + chunk * K * V, V, K, width, first_column);
    load_block(region + K * values_ld, values_ld, a.v_new + chunk * C * V, V, C, width, first_column);
    __syncthreads();
    // Row tile r reads q̂ and P's columns up to its diagonal: depth K + (r + 1)·16.
    const int col_tiles = width / kTile;
    Accumulator acc[kTilesPerWarp];
#pragma unroll
    for (int s = 0; s < kTilesPerWarp; ++s) {
      const int tile = warp + s * kWarps;
      if (tile >= square_tiles * col_tiles) continue;
      const int r = tile / col_tiles, c = tile % col_tiles;
      product<wmma::row_major>(acc[s], reads + r * kTile * ld, ld, region + c * kTile, values_ld,
                               K + (r + 1) * kTile);
    }
    __syncthreads();  // the values are read: the region takes the output tile
#pragma unroll
    for (int s = 0; s < kTilesPerWarp; ++s) {
      const int tile = warp + s * kWarps;
      if (tile >= square_tiles * col_tiles) continue;
      const int r = tile / col_tiles, c = tile % col_tiles;
      wmma::store_matrix_sync(region + r * kTile * values_ld + c * kTile, acc[s], values_ld,
                              wmma::mem_row_major);
    }
    __syncthreads();
    copy_rows(
        valid, width,
        [&](int r, int c) { return *reinterpret_cast<const float4*>(region + r * values_ld + c); },
        [&](int r, int c, float4 x) {
          const size_t row = (static_cast<size_t>(b) * a.tokens + first + r) * a.heads + h;
          store4(out + row * V + first_column + c, scaled(x, a.scale));
        });
    __syncthreads();
  }
}

// ---- launches ----

int max_shared_bytes() {
  int device = 0, bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return 0;
  return bytes;
}

template <class Layout>
Layout layout_of(const ChunkStageDims& d) {
  return {static_cast<int>(d.chunk_size), static_cast<int>(d.key_dim), static_cast<int>(d.value_dim)};
}

template <class Layout>
size_t shared_bytes(const Layout& l) {
  return sizeof(float) * static_cast<size_t>(l.total());
}

template <class Kernel, class Args, class Layout>
const char* launch(Kernel kernel, const Args& args, const Layout& l, const ChunkStageDims& d, void* stream) {
  const size_t bytes = shared_bytes(l);
  cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) return cudaGetErrorString(error);
  const dim3 grid(static_cast<unsigned>((d.tokens + d.chunk_size - 1) / d.chunk_size),
                  static_cast<unsigned>(d.batch * d.heads));
  kernel<<<grid, kThreads, bytes, static_cast<cudaStream_t>(stream)>>>(args, l);
  error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace

bool supports_chunk_stages(const ChunkStageDims& d) {
  constexpr int64_t kMaxDim = 4 * kThreads;  // copy_rows gives each thread four columns
  if (d.chunk_size < kTile || d.chunk_size > kMaxChunk || d.chunk_size % kTile != 0 || d.key_dim < kTile ||
      d.key_dim % kTile != 0 || d.key_dim > kMaxDim || d.value_dim < kTile || d.value_dim % kTile != 0 ||
      d.value_dim > kMaxDim)
    return false;
  if (d.batch < 1 || d.heads < 1 || d.batch * d.heads > 65535 || d.tokens < 1 ||
      d.tokens > (int64_t{1} << 30))
    return false;
  const size_t limit = static_cast<size_t>(std::max(max_shared_bytes(), 0));
  return shared_bytes(layout_of<PrepareLayout>(d)) <= limit &&
         shared_bytes(layout_of<OutputLayout>(d)) <= limit;
}

const char* chunk_prepare(const TokenRows& k, const TokenRows& v, const float* g, const float* beta,
                          float* gamma, float* k_to_end, float* chunk_decay, float* w, float* inverse,
                          float* u, const ChunkStageDims& dims, void* stream) {
  const PrepareArgs args{k,
                         v,
                         g,
                         beta,
                         gamma,
                         k_to_end,
                         chunk_decay,
                         w,
                         inverse,
                         u,
                         static_cast<int>(dims.tokens),
                         static_cast<int>(dims.heads)};
  const auto l = layout_of<PrepareLayout>(dims);
  return dims.bf16 ? launch(chunk_prepare_kernel<__nv_bfloat16>, args, l, dims, stream)
                   : launch(chunk_prepare_kernel<float>, args, l, dims, stream);
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
                        static_cast<int>(dims.heads)};
  const auto l = layout_of<OutputLayout>(dims);
  return dims.bf16 ? launch(chunk_output_kernel<__nv_bfloat16>, args, l, dims, stream)
                   : launch(chunk_output_kernel<float>, args, l, dims, stream);
}

}  // namespace dla::ops::fused::kernels
