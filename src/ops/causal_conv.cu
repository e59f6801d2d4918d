// CUDA kernels of ops::causal_conv1d_silu (dla/ops/causal_conv.h). A thread owns one channel over a block of
// kTokens tokens and slides a window of its last W inputs along them in registers; the threads of a warp
// hold adjacent channels, so every load and store is one coalesced row segment. With p = bias + Σ w·x:
//   forward   y = silu(p)
//   backward  dp = dy · silu'(p),  dx[t] = Σ_j w[j]·dp[t + W − 1 − j],  dw[j] = Σ_t dp[t]·x[t − W + 1 + j]
// The backward recomputes p; a block of tokens also needs dp of the W − 1 tokens after it. Each block writes
// its weight- and bias-gradient sums as one row of partials, summed outside.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <utility>

#include "causal_conv_kernels.h"
#include "cuda_launch.cuh"
#include "kernel_scalars.cuh"

namespace dla::ops::kernels {
namespace {

constexpr int kThreads = 128;  // channels per block
constexpr int kTokens = 64;    // tokens per block
// Tokens whose loads a thread issues together before using them: one at a time, each thread would wait out
// a global load's latency per token.
constexpr int kLoadGroup = 8;

/// One thread's channel and block of tokens.
struct Span {
  int channel;
  long long batch;
  int first, last;  ///< the tokens [first, last) it writes
  __device__ Span(const CausalConvDims& d)
      : channel(static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x)),
        batch(blockIdx.z),
        first(static_cast<int>(blockIdx.y) * kTokens),
        last(min(first + kTokens, static_cast<int>(d.tokens))) {}
};

/// A channel's filter taps and bias, in registers.
template <int W>
struct Filter {
  float w[W];
  float b;
  __device__ Filter(const float* weight, const float* bias, int channel)
      : b(bias != nullptr ? bias[channel] : 0.f) {
#pragma unroll
    for (int j = 0; j < W; ++j)
      w[j] = weight[channel * W + j];
  }
  /// bias + Σ_j w[j] · window[j], window[j] the input at t − (W − 1) + j.
  __device__ float pre_activation(const float (&window)[W]) const {
    float p = b;
#pragma unroll
    for (int j = 0; j < W; ++j)
      p += w[j] * window[j];
    return p;
  }
};

template <class X, int W>
__global__ void __launch_bounds__(kThreads)
    causal_conv_forward_kernel(const X* __restrict__ x, const float* __restrict__ weight,
                               const float* __restrict__ bias, X* __restrict__ y, CausalConvDims d) {
  const Span s(d);
  if (s.channel >= d.channels) return;
  const Filter<W> f(weight, bias, s.channel);
  const X* x_c = x + s.batch * d.batch_stride + s.channel;
  X* y_c = y + s.batch * d.tokens * d.channels + s.channel;
  // window[j] = x[t − (W − 1) + j] at token t.
  float window[W];
#pragma unroll
  for (int j = 0; j < W - 1; ++j) {
    const int t = s.first - (W - 1) + j;
    window[j] = t >= 0 ? to_float(x_c[t * d.token_stride]) : 0.f;
  }
  for (int group = s.first; group < s.last; group += kLoadGroup) {
    float loaded[kLoadGroup];
#pragma unroll
    for (int i = 0; i < kLoadGroup; ++i)
      loaded[i] = group + i < s.last ? to_float(x_c[(group + i) * d.token_stride]) : 0.f;
#pragma unroll
    for (int i = 0; i < kLoadGroup; ++i) {
      const int t = group + i;
      if (t >= s.last) break;
      window[W - 1] = loaded[i];
      const float p = f.pre_activation(window);
      y_c[t * d.channels] = from_float<X>(p * sigmoid(p));
#pragma unroll
      for (int j = 0; j < W - 1; ++j)
        window[j] = window[j + 1];
    }
  }
}

template <class X, int W>
__global__ void __launch_bounds__(kThreads)
    causal_conv_backward_kernel(const X* __restrict__ x, const float* __restrict__ weight,
                                const float* __restrict__ bias, const X* __restrict__ dy, X* __restrict__ dx,
                                float* __restrict__ dweight_partials, float* __restrict__ dbias_partials,
                                CausalConvDims d) {
  const Span s(d);
  if (s.channel >= d.channels) return;
  const Filter<W> f(weight, bias, s.channel);
  const long long row_offset = s.batch * d.tokens * d.channels + s.channel;
  const X* x_c = x + s.batch * d.batch_stride + s.channel;
  // window[j] = x[t − (W − 1) + j] and dp_window[i] = dp[t − (W − 1) + i] at token t.
  float window[W], dp_window[W], dw[W];
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const int t = s.first - (W - 1) + j;
    window[j] = j < W - 1 && t >= 0 ? to_float(x_c[t * d.token_stride]) : 0.f;
    dp_window[j] = 0.f;
    dw[j] = 0.f;
  }
  float db = 0.f;
  // Tokens past the block's last only feed dx of its last W − 1 tokens.
  const int end = min(s.last + W - 1, static_cast<int>(d.tokens));
  for (int group = s.first; group < s.last + W - 1; group += kLoadGroup) {
    float loaded_x[kLoadGroup], loaded_dy[kLoadGroup];
#pragma unroll
    for (int i = 0; i < kLoadGroup; ++i) {
      const int t = group + i;
      loaded_x[i] = t < end ? to_float(x_c[t * d.token_stride]) : 0.f;
      loaded_dy[i] = t < end ? to_float(dy[row_offset + t * d.channels]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kLoadGroup; ++i) {
      const int t = group + i;
      float dp = 0.f;
      if (t < end) {
        window[W - 1] = loaded_x[i];
        const float p = f.pre_activation(window);
        const float sig = sigmoid(p);
        dp = loaded_dy[i] * sig * (1.f + p * (1.f - sig));
        if (t < s.last) {
          db += dp;
#pragma unroll
          for (int j = 0; j < W; ++j)
            dw[j] += dp * window[j];
        }
#pragma unroll
        for (int j = 0; j < W - 1; ++j)
          window[j] = window[j + 1];
      }
#pragma unroll
      for (int j = 0; j < W - 1; ++j)
        dp_window[j] = dp_window[j + 1];
      dp_window[W - 1] = dp;
      const int out = t - (W - 1);
      if (out >= s.first && out < s.last) {
        float g = 0.f;
#pragma unroll
        for (int j = 0; j < W; ++j)
          g += f.w[j] * dp_window[W - 1 - j];
        dx[row_offset + out * d.channels] = from_float<X>(g);
      }
    }
  }
  const long long partial = s.batch * gridDim.y + blockIdx.y;
#pragma unroll
  for (int j = 0; j < W; ++j)
    dweight_partials[(partial * d.channels + s.channel) * W + j] = dw[j];
  dbias_partials[partial * d.channels + s.channel] = db;
}

dim3 grid_of(const CausalConvDims& d) {
  return dim3(static_cast<unsigned>((d.channels + kThreads - 1) / kThreads),
              static_cast<unsigned>((d.tokens + kTokens - 1) / kTokens), static_cast<unsigned>(d.batch));
}

/// Calls launch.template operator()<X, W>() for the dims' dtype and width; false for a width out of range.
template <class Launch, int... WidthsLessOne>
bool launch_for(const CausalConvDims& d, Launch& launch, std::integer_sequence<int, WidthsLessOne...>) {
  const auto for_width = [&]<int W>() {
    if (d.dtype == ConvDtype::bfloat16)
      launch.template operator()<__nv_bfloat16, W>();
    else
      launch.template operator()<float, W>();
    return true;
  };
  return ((d.width == WidthsLessOne + 1 && for_width.template operator()<WidthsLessOne + 1>()) || ...);
}

template <class Launch>
const char* dispatch(const CausalConvDims& d, Launch&& launch) {
  if (!launch_for(d, launch, std::make_integer_sequence<int, static_cast<int>(kMaxConvWidth)>()))
    return "causal_conv: unsupported width";
  return launched();
}

}  // namespace

bool causal_conv_supports(const CausalConvDims& dims) {
  constexpr int64_t kMaxInt = (int64_t{1} << 31) - 1;
  return dims.width >= 1 && dims.width <= kMaxConvWidth && dims.batch >= 1 && dims.batch <= 65535 &&
         dims.tokens >= 1 && dims.tokens + kMaxConvWidth <= kMaxInt && dims.channels >= 1 &&
         dims.channels <= kMaxInt;
}

int64_t causal_conv_partials(const CausalConvDims& dims) {
  return dims.batch * ((dims.tokens + kTokens - 1) / kTokens);
}

const char* causal_conv_forward(const void* x, const float* weight, const float* bias, void* y,
                                const CausalConvDims& dims, void* stream) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  return dispatch(dims, [&]<class X, int W>() {
    causal_conv_forward_kernel<X, W><<<grid_of(dims), kThreads, 0, cuda_stream>>>(
        static_cast<const X*>(x), weight, bias, static_cast<X*>(y), dims);
  });
}

const char* causal_conv_backward(const void* x, const float* weight, const float* bias, const void* dy,
                                 void* dx, float* dweight_partials, float* dbias_partials,
                                 const CausalConvDims& dims, void* stream) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  return dispatch(dims, [&]<class X, int W>() {
    causal_conv_backward_kernel<X, W><<<grid_of(dims), kThreads, 0, cuda_stream>>>(
        static_cast<const X*>(x), weight, bias, static_cast<const X*>(dy), static_cast<X*>(dx),
        dweight_partials, dbias_partials, dims);
  });
}

}  // namespace dla::ops::kernels
