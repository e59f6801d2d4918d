// CUDA kernels of ops::cross_entropy: one thread block per row, reading the row in vectors of eight logits
// and computing in float32. The forward keeps a running maximum and a sum of exponentials rescaled to it in
// one pass (the online softmax normaliser), then combines the threads' pairs; the backward recomputes the
// softmax from the saved logsumexp and writes the gradient in the logits' dtype.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "cross_entropy_kernels.h"
#include "cuda_launch.cuh"
#include "kernel_scalars.cuh"

namespace dla::ops::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kVector = 8;  // logits per load: 16 bytes of bf16, two float4 of float32

/// Eight consecutive logits as float32.
struct Logits8 {
  float x[kVector];
};

__device__ Logits8 load8(const float* p) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  return {{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}};
}

__device__ Logits8 load8(const __nv_bfloat16* p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
  Logits8 out;
#pragma unroll
  for (int i = 0; i < kVector / 2; ++i) {
    const float2 f = __bfloat1622float2(pairs[i]);
    out.x[2 * i] = f.x;
    out.x[2 * i + 1] = f.y;
  }
  return out;
}

__device__ void store8(float* p, const Logits8& v) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v.x[0], v.x[1], v.x[2], v.x[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v.x[4], v.x[5], v.x[6], v.x[7]);
}

__device__ void store8(__nv_bfloat16* p, const Logits8& v) {
  uint4 raw;
  __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVector / 2; ++i)
    pairs[i] = __floats2bfloat162_rn(v.x[2 * i], v.x[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

/// A running maximum and the sum of exp(x − max) over the values seen.
struct Normaliser {
  float max = -INFINITY;
  float sum = 0.f;

  __device__ void add(float x) {
    if (x > max) {
      sum = sum * expf(max - x) + 1.f;
      max = x;
    } else {
      sum += expf(x - max);
    }
  }

  __device__ void merge(const Normaliser& other) {
    if (other.max == -INFINITY) return;
    if (other.max > max) {
      sum = sum * expf(max - other.max) + other.sum;
      max = other.max;
    } else {
      sum += other.sum * expf(other.max - max);
    }
  }
};

/// The whole block's normaliser, in every thread.
__device__ Normaliser block_normaliser(Normaliser n) {
  __shared__ float warp_max[kThreads / 32], warp_sum[kThreads / 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    Normaliser other;
    other.max = __shfl_xor_sync(0xffffffffu, n.max, offset);
    other.sum = __shfl_xor_sync(0xffffffffu, n.sum, offset);
    n.merge(other);
  }
  if (threadIdx.x % 32 == 0) {
    warp_max[threadIdx.x / 32] = n.max;
    warp_sum[threadIdx.x / 32] = n.sum;
  }
  __syncthreads();
  Normaliser total;
  for (int w = 0; w < kThreads / 32; ++w) {
    Normaliser warp;
    warp.max = warp_max[w];
    warp.sum = warp_sum[w];
    total.merge(warp);
  }
  return total;
}

template <class Scalar>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_kernel(const Scalar* __restrict__ logits, const int64_t* __restrict__ labels,
                                 float* row_loss, float* logsumexp, CrossEntropyDims d) {
  const int64_t row = blockIdx.x;
  const Scalar* x = logits + row * d.vocab;
  Normaliser n;
  for (int64_t v = threadIdx.x * kVector; v < d.vocab; v += kThreads * kVector) {
    const Logits8 values = load8(x + v);
#pragma unroll
    for (int i = 0; i < kVector; ++i)
      n.add(values.x[i]);
  }
  const Normaliser total = block_normaliser(n);
  if (threadIdx.x != 0) return;
  const float lse = total.max + logf(total.sum);
  logsumexp[row] = lse;
  const int64_t label = labels[row];
  if (label == d.ignore_label)
    row_loss[row] = 0.f;
  else if (label < 0 || label >= d.vocab)
    row_loss[row] = NAN;  // an impossible label shows as a NaN loss instead of a wrong one
  else
    row_loss[row] = lse - to_float(x[label]);
}

template <class Scalar>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_kernel(const Scalar* __restrict__ logits, const int64_t* __restrict__ labels,
                                  const float* __restrict__ logsumexp, const float* d_loss,
                                  const float* counted, Scalar* d_logits, CrossEntropyDims d) {
  const int64_t row = blockIdx.x;
  const int64_t label = labels[row];
  const float scale = label == d.ignore_label ? 0.f : *d_loss / *counted;
  const float lse = logsumexp[row];
  const Scalar* x = logits + row * d.vocab;
  Scalar* dx = d_logits + row * d.vocab;
  for (int64_t v = threadIdx.x * kVector; v < d.vocab; v += kThreads * kVector) {
    Logits8 values = load8(x + v);
#pragma unroll
    for (int i = 0; i < kVector; ++i)
      values.x[i] = scale * (expf(values.x[i] - lse) - (v + i == label ? 1.f : 0.f));
    store8(dx + v, values);
  }
}

}  // namespace

const char* cross_entropy_forward(const void* logits, const int64_t* labels, float* row_loss,
                                  float* logsumexp, const CrossEntropyDims& dims, void* stream) {
  if (dims.rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = static_cast<unsigned>(dims.rows);
  if (dims.bf16) {
    cross_entropy_forward_kernel<<<grid, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(logits), labels,
                                                           row_loss, logsumexp, dims);
  } else {
    cross_entropy_forward_kernel<<<grid, kThreads, 0, s>>>(static_cast<const float*>(logits), labels,
                                                           row_loss, logsumexp, dims);
  }
  return launched();
}

const char* cross_entropy_backward(const void* logits, const int64_t* labels, const float* logsumexp,
                                   const float* d_loss, const float* counted, void* d_logits,
                                   const CrossEntropyDims& dims, void* stream) {
  if (dims.rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = static_cast<unsigned>(dims.rows);
  if (dims.bf16) {
    cross_entropy_backward_kernel<<<grid, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(logits), labels,
                                                            logsumexp, d_loss, counted,
                                                            static_cast<__nv_bfloat16*>(d_logits), dims);
  } else {
    cross_entropy_backward_kernel<<<grid, kThreads, 0, s>>>(static_cast<const float*>(logits), labels,
                                                            logsumexp, d_loss, counted,
                                                            static_cast<float*>(d_logits), dims);
  }
  return launched();
}

}  // namespace dla::ops::kernels
