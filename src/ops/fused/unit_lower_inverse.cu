// CUDA kernel of fused::unit_lower_inverse: one thread block per matrix, one thread per column, forward
// substitution in shared memory. Column j of T = (I + A)⁻¹ is T[i][j] = [i = j] − Σ_{j <= l < i} A[i][l]
// T[l][j], so each thread needs only its own column of T and no synchronisation between rows.
#include <cuda_runtime.h>

#include "kernels.h"

namespace dla::ops::fused::kernels {
namespace {

constexpr int64_t kMaxSize = 64;

__global__ void unit_lower_inverse_kernel(const float* __restrict__ a, float* __restrict__ t, int n) {
  extern __shared__ float shared[];
  float* a_shared = shared;          // [n][n]
  float* t_shared = shared + n * n;  // [n][n + 1]: the odd stride keeps column walks conflict-free
  const size_t matrix = static_cast<size_t>(blockIdx.x) * n * n;
  // float4 loads, several in flight per thread: one at a time would leave the block waiting on memory.
  const float4* a4 = reinterpret_cast<const float4*>(a + matrix);
  float4* a_shared4 = reinterpret_cast<float4*>(a_shared);
#pragma unroll 8
  for (int i = threadIdx.x; i < n * n / 4; i += blockDim.x)
    a_shared4[i] = __ldg(a4 + i);
  __syncthreads();
  const int j = threadIdx.x;
  for (int i = 0; i < n; ++i) {
    float value = i == j ? 1.f : 0.f;
    for (int l = j; l < i; ++l)
      value -= a_shared[i * n + l] * t_shared[l * (n + 1) + j];
    t_shared[i * (n + 1) + j] = value;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n * n; i += blockDim.x)
    t[matrix + i] = t_shared[(i / n) * (n + 1) + i % n];
}

}  // namespace

bool supports_unit_lower_inverse(int64_t n) {
  return n >= 4 && n <= kMaxSize && n % 4 == 0;
}

const char* unit_lower_inverse(const float* a, float* t, int64_t count, int64_t n, void* stream) {
  if (count == 0) return nullptr;
  const size_t shared_bytes = sizeof(float) * static_cast<size_t>(n * n + n * (n + 1));
  unit_lower_inverse_kernel<<<static_cast<unsigned>(count), static_cast<unsigned>(n), shared_bytes,
                              static_cast<cudaStream_t>(stream)>>>(a, t, static_cast<int>(n));
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace dla::ops::fused::kernels
