// CUDA kernels of ops::rms_norm (dla/ops/rms_norm.h). One warp normalises one group of G channels (a row):
// a first pass sums over the row, a second writes it, re-reading the row from cache. With a the (gated)
// input, r = rsqrt(Σa²/d + eps) (d = G or 1), n = a·r:
//   forward   y = n·w [· silu(z)]
//   backward  dn = dy0·w (dy0 = dy [· silu(z)]),  da = r·(dn − n·Σ(dn·n)/d),  dw = Σ_rows dy0·n
// The weight gradient of a block's rows is summed in shared memory; the blocks' partials are summed outside.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "kernel_scalars.cuh"
#include "rms_norm_kernels.h"

namespace dla::ops::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBackwardBlocksPerSm = 4;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

/// Where one row's data lies.
struct Row {
  long long offset;  ///< of the row's first channel in x, z, y
  const float* weight;
  __device__ Row(long long row, const float* weight_D, const RmsNormDims& d)
      : offset(row * d.group_size),
        weight(weight_D == nullptr ? nullptr : weight_D + (row % (d.dim / d.group_size)) * d.group_size) {}
};

template <class X, class Z>
__global__ void __launch_bounds__(kThreads)
    rms_norm_forward_kernel(const X* __restrict__ x, const float* __restrict__ weight,
                            const Z* __restrict__ z, X* __restrict__ y, float* __restrict__ rstd,
                            RmsNormDims d) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const long long row = static_cast<long long>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= d.rows) return;
  const Row at(row, weight, d);
  const int G = static_cast<int>(d.group_size);
  const bool gate_first = z != nullptr && d.gate_before_norm, gate_last = z != nullptr && !d.gate_before_norm;
  float sum = 0.f;
  for (int c = lane; c < G; c += 32) {
    float a = to_float(x[at.offset + c]);
    if (gate_first) {
      const float g = to_float(z[at.offset + c]);
      a *= g * sigmoid(g);
    }
    sum += a * a;
  }
  const float r = rsqrtf(warp_sum(sum) / (d.mean ? static_cast<float>(G) : 1.f) + d.eps);
  if (lane == 0) rstd[row] = r;
  for (int c = lane; c < G; c += 32) {
    float a = to_float(x[at.offset + c]);
    float gate = 1.f;
    if (z != nullptr) {
      const float g = to_float(z[at.offset + c]);
      gate = g * sigmoid(g);
    }
    if (gate_first) a *= gate;
    float out = a * r;
    if (at.weight != nullptr) out *= at.weight[c];
    if (gate_last) out *= gate;
    y[at.offset + c] = from_float<X>(out);
  }
}

template <class X, class Z>
__global__ void __launch_bounds__(kThreads)
    rms_norm_backward_kernel(const X* __restrict__ x, const float* __restrict__ weight,
                             const Z* __restrict__ z, const float* __restrict__ rstd,
                             const X* __restrict__ dy, X* __restrict__ dx, Z* __restrict__ dz,
                             float* __restrict__ dweight_partials, RmsNormDims d) {
  extern __shared__ float dweight_shared[];
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int D = static_cast<int>(d.dim), G = static_cast<int>(d.group_size);
  if (weight != nullptr) {
    for (int i = static_cast<int>(threadIdx.x); i < D; i += kThreads)
      dweight_shared[i] = 0.f;
    __syncthreads();
  }
  const bool gate_first = z != nullptr && d.gate_before_norm, gate_last = z != nullptr && !d.gate_before_norm;
  const float divisor = d.mean ? static_cast<float>(G) : 1.f;
  // The same channel terms in both passes: a, n, the gate, dy0 and dn.
  struct Terms {
    float x, a, n, g, gate, dy0, dn;
  };
  for (long long row = static_cast<long long>(blockIdx.x) * kWarps + threadIdx.x / 32; row < d.rows;
       row += static_cast<long long>(gridDim.x) * kWarps) {
    const Row at(row, weight, d);
    const float r = rstd[row];
    auto terms = [&](int c) {
      Terms t;
      t.x = to_float(x[at.offset + c]);
      t.g = z != nullptr ? to_float(z[at.offset + c]) : 0.f;
      t.gate = z != nullptr ? t.g * sigmoid(t.g) : 1.f;
      t.a = gate_first ? t.x * t.gate : t.x;
      t.n = t.a * r;
      t.dy0 = to_float(dy[at.offset + c]) * (gate_last ? t.gate : 1.f);
      t.dn = at.weight != nullptr ? t.dy0 * at.weight[c] : t.dy0;
      return t;
    };
    float dot = 0.f;
    for (int c = lane; c < G; c += 32) {
      const Terms t = terms(c);
      dot += t.dn * t.n;
    }
    const float projection = warp_sum(dot) / divisor;
    for (int c = lane; c < G; c += 32) {
      const Terms t = terms(c);
      const float da = r * (t.dn - t.n * projection);
      const float s = sigmoid(t.g);
      const float dsilu = s * (1.f + t.g * (1.f - s));
      if (gate_first) {
        dx[at.offset + c] = from_float<X>(da * t.gate);
        dz[at.offset + c] = from_float<Z>(da * t.x * dsilu);
      } else {
        dx[at.offset + c] = from_float<X>(da);
        if (gate_last) {
          const float y0 = at.weight != nullptr ? t.n * at.weight[c] : t.n;
          dz[at.offset + c] = from_float<Z>(to_float(dy[at.offset + c]) * y0 * dsilu);
        }
      }
      if (at.weight != nullptr) atomicAdd(&dweight_shared[(at.weight - weight) + c], t.dy0 * t.n);
    }
  }
  if (weight != nullptr) {
    __syncthreads();
    for (int i = static_cast<int>(threadIdx.x); i < D; i += kThreads)
      dweight_partials[static_cast<long long>(blockIdx.x) * D + i] = dweight_shared[i];
  }
}

unsigned forward_blocks(const RmsNormDims& d) {
  return static_cast<unsigned>((d.rows + kWarps - 1) / kWarps);
}

unsigned backward_blocks(const RmsNormDims& d) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const long long wanted = (d.rows + kWarps - 1) / kWarps;
  return static_cast<unsigned>(wanted < static_cast<long long>(sms) * kBackwardBlocksPerSm
                                   ? wanted
                                   : static_cast<long long>(sms) * kBackwardBlocksPerSm);
}

const char* last_error() {
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

/// Calls fn with null pointers of the element types of x and z.
template <class Fn>
void with_types(const RmsNormDims& d, Fn&& fn) {
  const bool x_float = d.x_dtype == NormDtype::float32, z_float = d.z_dtype == NormDtype::float32;
  if (x_float && z_float) fn(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  if (x_float && !z_float) fn(static_cast<float*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
  if (!x_float && z_float) fn(static_cast<__nv_bfloat16*>(nullptr), static_cast<float*>(nullptr));
  if (!x_float && !z_float) fn(static_cast<__nv_bfloat16*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
}

}  // namespace

const char* rms_norm_forward(const void* x, const float* weight, const void* z, void* y, float* rstd,
                             const RmsNormDims& dims, void* stream) {
  if (dims.rows == 0) return nullptr;
  with_types(dims, [&](auto* x_type, auto* z_type) {
    using X = std::remove_pointer_t<decltype(x_type)>;
    using Z = std::remove_pointer_t<decltype(z_type)>;
    rms_norm_forward_kernel<X, Z><<<forward_blocks(dims), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const X*>(x), weight, static_cast<const Z*>(z), static_cast<X*>(y), rstd, dims);
  });
  return last_error();
}

int64_t rms_norm_weight_partials(const RmsNormDims& dims) {
  return backward_blocks(dims);
}

const char* rms_norm_backward(const void* x, const float* weight, const void* z, const float* rstd,
                              const void* dy, void* dx, void* dz, float* dweight_partials,
                              const RmsNormDims& dims, void* stream) {
  if (dims.rows == 0) return nullptr;
  const size_t shared = weight != nullptr ? static_cast<size_t>(dims.dim) * sizeof(float) : 0;
  with_types(dims, [&](auto* x_type, auto* z_type) {
    using X = std::remove_pointer_t<decltype(x_type)>;
    using Z = std::remove_pointer_t<decltype(z_type)>;
    rms_norm_backward_kernel<X, Z>
        <<<backward_blocks(dims), kThreads, shared, static_cast<cudaStream_t>(stream)>>>(
            static_cast<const X*>(x), weight, static_cast<const Z*>(z), rstd, static_cast<const X*>(dy),
            static_cast<X*>(dx), static_cast<Z*>(dz), dweight_partials, dims);
  });
  return last_error();
}

}  // namespace dla::ops::kernels
