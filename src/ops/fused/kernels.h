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

/// Whether unit_lower_inverse runs n × n matrices on the current device.
bool supports_unit_lower_inverse(int64_t n);

/// t = (I + a)⁻¹ for `count` strictly lower triangular n × n matrices a (row-major, one after another,
/// 16-byte aligned);
/// what a holds on and above its diagonal is ignored. nullptr on success, else the CUDA error's text.
const char* unit_lower_inverse(const float* a, float* t, int64_t count, int64_t n, void* stream);

}  // namespace dla::ops::fused::kernels
