// The CUDA kernel of the per-chunk stages' backward (dla/memory/intra_chunk.h): every input gradient of a
// chunk from the gradients of its outputs, the products of docs/memory/policies.md in one thread block per
// chunk, on TF32 tensor cores with float32 accumulators. Behind a plain C++ interface so that only the .cu
// file is compiled by nvcc. q, k, v and their gradients are ChunkedRows (float32 or bf16, in chunk or token
// layout); every other pointer is a contiguous float32 device buffer in the layout of IntraChunkInputs /
// IntraChunkTerms with B·H·N flattened into one leading dim of chunks; `stream` is a cudaStream_t.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dla::memory::kernels {

struct IntraChunkGradientDims {
  int64_t chunks;           ///< B·H·N
  int64_t heads;            ///< H
  int64_t sequence_chunks;  ///< N
  int64_t chunk_size;       ///< C
  int64_t key_dim;          ///< K
  int64_t value_dim;        ///< V
  bool delta_rule;          ///< whether β, T, W and v' (and their gradients) take part; all null for SSD
};

/// A [B, H, N, C, D] operand as the kernels address it: row r of chunk n of batch·head b·H + h starts at
/// element b·batch + h·head + n·chunk + r·row of `data`, and its D elements are contiguous. Both a contiguous
/// chunk-layout buffer and a [B, T, H, D] tensor's tokens (chunk = C·row) are such views, so the kernels read
/// and write q, k, v and their gradients where they are. Float32, or bf16 where `bf16`; the strides and the
/// pointer are multiples of 4 elements.
struct ChunkedRows {
  void* data;
  int64_t batch, head, chunk, row;
  bool bf16;
};

struct IntraChunkGradientArgs {
  ChunkedRows q, k;          ///< [B, H, N, C, K]
  ChunkedRows v;             ///< [B, H, N, C, V]
  const float* g;            ///< [chunks, C] log gates
  const float* beta;         ///< [chunks, C]
  const float* lam_in;       ///< Λ [chunks, C, C]
  const float* t_inverse;    ///< T [chunks, C, C], as the forward returned it
  const float* w;            ///< W [chunks, C, K]
  const float* chunk_decay;  ///< exp(γ_last) [chunks]
  // The gradients of the outputs (zeros for those the loss does not reach).
  const float* d_intra;          ///< [chunks, C, V]
  const float* d_transported_q;  ///< [chunks, C, K]
  const float* d_k_to_end;       ///< [chunks, C, K]
  const float* d_w;              ///< [chunks, C, K]
  const float* d_t_inverse;      ///< [chunks, C, C]
  const float* d_source_v;       ///< [chunks, C, V]
  const float* d_chunk_decay;    ///< [chunks]
  const float* source_v;         ///< v' = β v [chunks, C, V], as the forward returned it; SSD reads v
  ChunkedRows d_q, d_k;          ///< like q and k
  ChunkedRows d_v;               ///< like v
  float *d_g, *d_beta;           ///< [chunks, C]
  float* d_lam_in;               ///< [chunks, C, C]
};

/// Whether the kernel runs these dims on the current device: C = 64, K of 64 or 128, V a positive multiple
/// of 32, and its shared memory within the device's limit.
bool supports_intra_chunk_gradients(const IntraChunkGradientDims& dims);

/// nullptr on success, else the CUDA error's text. bf16 inputs (args.q.bf16) run the kernel of
/// intra_chunk_gradients_bf16.cu, float32 ones the TF32 kernel.
const char* intra_chunk_gradients(const IntraChunkGradientArgs& args, const IntraChunkGradientDims& dims,
                                  void* stream);

/// The bf16 kernel (bf16 operands and tensor cores) and the shared memory it takes for a key dim of 64 or
/// 128; intra_chunk_gradients launches it.
const char* intra_chunk_gradients_bf16(const IntraChunkGradientArgs& args, const IntraChunkGradientDims& dims,
                                       void* stream);
size_t intra_chunk_gradients_bf16_bytes(int64_t key_dim);

}  // namespace dla::memory::kernels
