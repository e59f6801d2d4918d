// The CUDA kernels of ops::causal_conv1d_silu (dla/ops/causal_conv.h) behind a plain C++ interface, so that
// only the .cu file is compiled by nvcc. x is read through its batch and token strides (channels adjacent);
// y, dy and dx are contiguous [B, T, C] in x's dtype; weight [C, W] and bias [C] are contiguous float32;
// `stream` is a cudaStream_t.
#pragma once

#include <cstdint>

namespace dla::ops::kernels {

enum class ConvDtype { float32, bfloat16 };

struct CausalConvDims {
  int64_t batch;         ///< B
  int64_t tokens;        ///< T
  int64_t channels;      ///< C
  int64_t width;         ///< W
  int64_t batch_stride;  ///< of x, in elements
  int64_t token_stride;  ///< of x, in elements
  ConvDtype dtype;       ///< of x, y, dy, dx
};

/// The widest convolution the kernels take.
constexpr int64_t kMaxConvWidth = 8;

/// Whether the kernels take these dims (W within kMaxConvWidth, sizes within the launch limits).
bool causal_conv_supports(const CausalConvDims& dims);

/// bias may be null. nullptr on success, else the CUDA error's text.
const char* causal_conv_forward(const void* x, const float* weight, const float* bias, void* y,
                                const CausalConvDims& dims, void* stream);

/// The rows of the weight- and bias-gradient partials the backward writes (one per block of tokens): the
/// gradients are their sums over rows.
int64_t causal_conv_partials(const CausalConvDims& dims);

/// bias may be null. dweight_partials [causal_conv_partials, C, W] and dbias_partials [causal_conv_partials,
/// C], float32 (dbias_partials is written even without a bias). nullptr on success, else the CUDA error's
/// text.
const char* causal_conv_backward(const void* x, const float* weight, const float* bias, const void* dy,
                                 void* dx, float* dweight_partials, float* dbias_partials,
                                 const CausalConvDims& dims, void* stream);

}  // namespace dla::ops::kernels
