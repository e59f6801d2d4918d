// The CUDA kernels of the fused ops, behind a plain C++ interface so that only the .cu files are compiled
// by nvcc. All pointers are contiguous float32 device buffers in the layouts of
// dla/ops/fused.h, with B·H flattened into one leading dim; `stream` is a cudaStream_t.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dla::ops::fused::kernels {

struct StatePassDims {
  int64_t batch_heads;  ///< B·H
  int64_t chunks;       ///< M
  int64_t chunk_size;   ///< C
  int64_t key_dim;      ///< K
  int64_t value_dim;    ///< V
};

/// Whether the kernels can run these dims on the current device.
bool supports(const StatePassDims& dims);

/// nullptr on success, else the CUDA error's text. w may be null (no delta rule; v_new is not written).
/// With `tf32` the products run on tensor cores with TF32 operands where the dims allow it (C a multiple of
/// 16, K of 32, and the larger shared memory fits); otherwise, and without `tf32`, in exact float32.
const char* state_pass_forward(const float* k_to_end, const float* u, const float* w,
                               const float* chunk_decay, const float* initial_state, float* states,
                               float* v_new, float* final_state, const StatePassDims& dims, bool tf32,
                               void* stream);

/// nullptr on success, else the CUDA error's text. w may be null (no delta rule). `tf32` as for the forward.
const char* state_pass_backward(const float* q_read, const float* d_out, const float* d_v_new_intra,
                                const float* k_to_end, const float* w, const float* chunk_decay,
                                const float* d_final_state, float* d_states_next, float* d_v_new,
                                float* d_initial_state, const StatePassDims& dims, bool tf32, void* stream);

/// Whether the bf16 state-pass kernels run these dims on the current device: C of 32 or 64 and K of 64 or 128
/// (the instantiated kernels), V a multiple of 8, and their shared memory within the device's limit.
bool supports_bf16_state_pass(const StatePassDims& dims);

/// The state pass for bf16 operands: k_to_end and w (null without the delta rule) are contiguous bf16
/// buffers, states and v_new (written also without the delta rule: u rounded) bf16, everything else float32
/// as for state_pass_forward. The products run on bf16 tensor cores with the state in float32, rounded to
/// bf16 where it is an operand. nullptr on success, else the CUDA error's text.
const char* state_pass_forward_bf16(const void* k_to_end, const float* u, const void* w,
                                    const float* chunk_decay, const float* initial_state, void* states,
                                    void* v_new, float* final_state, const StatePassDims& dims, void* stream);

/// The state pass backward for bf16 operands: q_read, d_out, k_to_end and w (null without the delta rule) are
/// contiguous bf16 buffers, and so are d_states_next and d_v_new; everything else float32 as for
/// state_pass_backward. nullptr on success, else the CUDA error's text.
const char* state_pass_backward_bf16(const void* q_read, const void* d_out, const float* d_v_new_intra,
                                     const void* k_to_end, const void* w, const float* chunk_decay,
                                     const float* d_final_state, void* d_states_next, void* d_v_new,
                                     float* d_initial_state, const StatePassDims& dims, void* stream);

/// Whether unit_lower_inverse runs n × n matrices on the current device.
bool supports_unit_lower_inverse(int64_t n);

/// t = (I + a)⁻¹ for `count` strictly lower triangular n × n matrices a (row-major, one after another,
/// 16-byte aligned);
/// what a holds on and above its diagonal is ignored. nullptr on success, else the CUDA error's text.
const char* unit_lower_inverse(const float* a, float* t, int64_t count, int64_t n, void* stream);

/// A [B, T, H, D] tensor read in place: element (b, t, h, d) at data + b·batch + t·token + h·head + d
/// (strides in elements), float32 or bf16. Every row of D starts 16-byte aligned (float32) or 8-byte (bf16).
struct TokenRows {
  const void* data;
  int64_t batch, token, head;
};

struct ChunkStageDims {
  int64_t batch;       ///< B
  int64_t tokens;      ///< T
  int64_t heads;       ///< H
  int64_t chunk_size;  ///< C
  int64_t key_dim;     ///< K
  int64_t value_dim;   ///< V
  bool bf16;           ///< q, k, v (and the output) are bf16, else float32
};

/// Whether chunk_prepare and chunk_output run these dims on the current device: C of 32 or 64 and K of 64,
/// 128 or 256 (the instantiated kernels), V a multiple of 16 up to 1024, B·H at most 65535, and their shared
/// memory within the device's opt-in limit.
bool supports_chunk_stages(const ChunkStageDims& dims);

/// Where chunk_prepare also writes bf16 copies of k_to_end, w and inverse, in their layouts; null: not
/// written.
struct PreparedCopies {
  void *k_to_end, *w, *inverse;
};

/// The per-chunk terms the state pass and the backward read, on TF32 tensor cores, into contiguous
/// float32 buffers of M = ⌈T / C⌉ chunks: gamma [B·H, M, C] (chunk-local cumsum of g), k_to_end
/// [B·H, M, C, K], chunk_decay [B·H, M]; with beta also w [B·H, M, C, K], inverse [B·H, M, C, C] and u
/// [B·H, M, C, V] as the WY representation, else u = v (u null: not formed). g and beta are contiguous
/// float32 [B, T, H]; beta null selects SSD (w and inverse are then not written). With known_inverse (T
/// from an earlier call on the same k, g and beta) the kernel reads T instead of forming it, and inverse is
/// not written. k_to_end and w may be null where their bf16 copies are all that is wanted. nullptr on
/// success, else the CUDA error's text.
const char* chunk_prepare(const TokenRows& k, const TokenRows& v, const float* g, const float* beta,
                          float* gamma, float* k_to_end, float* chunk_decay, float* w, float* inverse,
                          const float* known_inverse, float* u, const PreparedCopies& copies,
                          const ChunkStageDims& dims, void* stream);

/// out = scale · ((exp(gamma) ⊙ q) S + ((q kᵀ) ⊙ D) v_new) for every chunk, on TF32 tensor cores, written
/// to a contiguous [B, T, H, V] buffer of q's type. states [B·H, M, K, V] and v_new [B·H, M, C, V] are the
/// state pass's, of q's type. nullptr on success, else the CUDA error's text.
const char* chunk_output(const TokenRows& q, const TokenRows& k, const float* gamma, const void* states,
                         const void* v_new, double scale, void* out, const ChunkStageDims& dims,
                         void* stream);

/// Whether chunk_value_gradient and chunk_gradients run these dims on the current device: as
/// supports_chunk_stages, with K of 64 or 128 (the instantiated kernels) and their shared memory within the
/// device's opt-in limit.
bool supports_chunk_gradients(const ChunkStageDims& dims);

/// Before the state pass backward, for every chunk: d_v_new_intra = scale · ((q kᵀ) ⊙ D)ᵀ dO [B·H, M, C, V],
/// q_read = scale · exp(gamma) ⊙ q [B·H, M, C, K] and d_out_chunks = dO [B·H, M, C, V] as contiguous buffers
/// (zero rows past the last token), d_v_new_intra float32 and q_read and d_out_chunks of q's type. dO is read
/// in place like q (same type). nullptr on success, else the CUDA error's text.
const char* chunk_value_gradient(const TokenRows& q, const TokenRows& k, const TokenRows& d_out,
                                 const float* gamma, double scale, void* q_read, void* d_out_chunks,
                                 float* d_v_new_intra, const ChunkStageDims& dims, void* stream);

/// What chunk_gradients reads and writes. q, k and v are the op's inputs read in place; beta is contiguous
/// float32 [B, T, H], null for SSD; gamma and inverse are chunk_prepare's; states and v_new the forward state
/// pass's; d_out chunk_value_gradient's d_out_chunks; d_states_next and d_v_new the state pass backward's;
/// these five of q's type. d_q, d_k and d_v are contiguous [B, T, H, ·] of q's type, d_g and d_beta
/// contiguous float32 [B, T, H] (d_beta unused for SSD).
struct ChunkGradientBuffers {
  TokenRows q, k, v;
  const float* beta;
  const float* gamma;
  const float* inverse;
  const void* states;
  const void* v_new;
  const void* d_out;
  const void* d_states_next;
  const void* d_v_new;
  void* d_q;
  void* d_k;
  void* d_v;
  float* d_g;
  float* d_beta;
};

/// The input gradients of every chunk after the state pass backward (docs/ops/fused.md), on TF32 tensor
/// cores. nullptr on success, else the CUDA error's text.
const char* chunk_gradients(const ChunkGradientBuffers& buffers, double scale, const ChunkStageDims& dims,
                            void* stream);

}  // namespace dla::ops::fused::kernels
