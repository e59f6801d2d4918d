// Scalar helpers the elementwise CUDA kernels share: loads and stores of float32 or bf16 computed in float32,
// and the sigmoid of the SiLU gates.
#pragma once

#include <cuda_bf16.h>

namespace dla::ops::kernels {

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__device__ __forceinline__ float sigmoid(float v) {
  return 1.f / (1.f + expf(-v));
}

}  // namespace dla::ops::kernels
