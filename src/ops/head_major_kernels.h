// The CUDA kernel of ops::to_head_major and ops::from_head_major (dla/ops/head_major.h) behind a plain C++
// interface, so that only the .cu file is compiled by nvcc. Buffers are contiguous device buffers; `stream`
// is a cudaStream_t.
#pragma once

#include <cstdint>

namespace dla::ops::kernels {

enum class ElementType { float32, bfloat16, float16 };

/// out[b, i, j, e] = (in + added)[b, j, i, e] · scale, computed in float32 and converted from in_type to
/// out_type: in and added (null: none) are [B, J, I, E], out [B, I, J, E]. nullptr on success, else the CUDA
/// error's text.
const char* swap_middle_dims(const void* in, const void* added, float scale, ElementType in_type, void* out,
                             ElementType out_type, int64_t B, int64_t I, int64_t J, int64_t E, void* stream);

}  // namespace dla::ops::kernels
