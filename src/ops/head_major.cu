// CUDA kernel of ops::to_head_major and ops::from_head_major (head_major_kernels.h): one thread per run of
// kWidth entries along the last dim (one where E is not a multiple of it), so that each loads and stores
// whole vectors. Threads run through the output in order, so its stores are coalesced; each group of E /
// kWidth threads reads one contiguous row of the input.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_launch.cuh"
#include "head_major_kernels.h"

namespace dla::ops::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWidth = 4;

__device__ float to_float(float x) {
  return x;
}
__device__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ float to_float(__half x) {
  return __half2float(x);
}

template <class T>
__device__ T from_float(float x);
template <>
__device__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

/// kWidth entries as one aligned vector.
template <class T>
struct alignas(sizeof(T) * kWidth) Vector {
  T x[kWidth];
};

/// Index is 32-bit where every offset fits, else 64-bit: the divisions are most of the kernel's work.
template <class In, class Out, int kRun, class Index>
__global__ void __launch_bounds__(kThreads)
    swap_middle_dims_kernel(const In* __restrict__ in, const In* __restrict__ added, float scale,
                            Out* __restrict__ out, Index I, Index J, Index runs, Index total) {
  // (in + added) · scale in float32, in that order, as the same LibTorch ops would round it.
  const auto value = [&](In x, const In* y) {
    float sum = to_float(x);
    if (added != nullptr) sum = sum + to_float(*y);
    return from_float<Out>(sum * scale);
  };
  for (Index o = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; o < total;
       o += static_cast<Index>(gridDim.x) * kThreads) {
    const Index run = o % runs, row = o / runs;  // row of out: (b, i, j)
    const Index j = row % J, bi = row / J, i = bi % I, b = bi / I;
    const Index source = ((b * J + j) * I + i) * runs + run;
    if constexpr (kRun == 1) {
      out[o] = value(in[source], added != nullptr ? added + source : nullptr);
    } else {
      const Vector<In> x = reinterpret_cast<const Vector<In>*>(in)[source];
      Vector<In> y;
      if (added != nullptr) y = reinterpret_cast<const Vector<In>*>(added)[source];
      Vector<Out> z;
#pragma unroll
      for (int e = 0; e < kRun; ++e)
        z.x[e] = value(x.x[e], &y.x[e]);
      reinterpret_cast<Vector<Out>*>(out)[o] = z;
    }
  }
}

template <class In, class Out>
const char* launch(const void* in, const void* added, float scale, void* out, int64_t B, int64_t I, int64_t J,
                   int64_t E, void* stream) {
  const bool vectors = E % kWidth == 0;
  const int64_t runs = vectors ? E / kWidth : E, total = B * I * J * runs;
  if (total == 0) return nullptr;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
  const auto run = [&](auto kernel, auto index) {
    using Index = decltype(index);
    kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const In*>(in), static_cast<const In*>(added), scale, static_cast<Out*>(out),
        static_cast<Index>(I), static_cast<Index>(J), static_cast<Index>(runs), static_cast<Index>(total));
  };
  // 32-bit indices where the largest offset, of entries, fits in them.
  const bool narrow = B * I * J * E < (int64_t{1} << 31);
  if (vectors && narrow) run(swap_middle_dims_kernel<In, Out, kWidth, uint32_t>, uint32_t{});
  if (vectors && !narrow) run(swap_middle_dims_kernel<In, Out, kWidth, int64_t>, int64_t{});
  if (!vectors && narrow) run(swap_middle_dims_kernel<In, Out, 1, uint32_t>, uint32_t{});
  if (!vectors && !narrow) run(swap_middle_dims_kernel<In, Out, 1, int64_t>, int64_t{});
  return launched();
}

template <class In>
const char* launch_to(const void* in, const void* added, float scale, void* out, ElementType out_type,
                      int64_t B, int64_t I, int64_t J, int64_t E, void* stream) {
  switch (out_type) {
    case ElementType::float32:
      return launch<In, float>(in, added, scale, out, B, I, J, E, stream);
    case ElementType::bfloat16:
      return launch<In, __nv_bfloat16>(in, added, scale, out, B, I, J, E, stream);
    case ElementType::float16:
      return launch<In, __half>(in, added, scale, out, B, I, J, E, stream);
  }
  return "swap_middle_dims: unknown element type";
}

}  // namespace

const char* swap_middle_dims(const void* in, const void* added, float scale, ElementType in_type, void* out,
                             ElementType out_type, int64_t B, int64_t I, int64_t J, int64_t E, void* stream) {
  switch (in_type) {
    case ElementType::float32:
      return launch_to<float>(in, added, scale, out, out_type, B, I, J, E, stream);
    case ElementType::bfloat16:
      return launch_to<__nv_bfloat16>(in, added, scale, out, out_type, B, I, J, E, stream);
    case ElementType::float16:
      return launch_to<__half>(in, added, scale, out, out_type, B, I, J, E, stream);
  }
  return "swap_middle_dims: unknown element type";
}

}  // namespace dla::ops::kernels
