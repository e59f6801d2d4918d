// The CUDA kernels of ops::rms_norm (dla/ops/rms_norm.h) behind a plain C++ interface, so that only the .cu
// file is compiled by nvcc. Tensors are contiguous device buffers: x, z, y, dy, dx, dz of [rows, G] in their
// dtypes, weight and dweight float32 of [D], rstd float32 of [rows]; `stream` is a cudaStream_t.
#pragma once

#include <cstdint>

namespace dla::ops::kernels {

enum class NormDtype { float32, bfloat16 };

struct RmsNormDims {
  int64_t rows;        ///< groups in all: numel / G
  int64_t group_size;  ///< G
  int64_t dim;         ///< D, the weight's length; row r uses weight[(r mod D/G)·G ...]
  float eps;
  bool mean;              ///< divide Σa² by G (else by 1)
  bool gate_before_norm;  ///< a = x·silu(z), else y = n·w·silu(z)
  NormDtype x_dtype;      ///< of x, y, dy, dx
  NormDtype z_dtype;      ///< of z, dz
};

/// The largest D whose weight gradient one block accumulates in shared memory.
constexpr int64_t kMaxNormWeightDim = 8192;

/// weight and z may be null. Writes y and the reciprocal RMS of every row (rstd). nullptr on success, else
/// the CUDA error's text.
const char* rms_norm_forward(const void* x, const float* weight, const void* z, void* y, float* rstd,
                             const RmsNormDims& dims, void* stream);

/// The rows of the weight-gradient partials the backward writes: dweight = their sum over rows.
int64_t rms_norm_weight_partials(const RmsNormDims& dims);

/// weight and z may be null (then dz and dweight_partials are ignored). dweight_partials:
/// [rms_norm_weight_partials, D] float32. nullptr on success, else the CUDA error's text.
const char* rms_norm_backward(const void* x, const float* weight, const void* z, const float* rstd,
                              const void* dy, void* dx, void* dz, float* dweight_partials,
                              const RmsNormDims& dims, void* stream);

}  // namespace dla::ops::kernels
