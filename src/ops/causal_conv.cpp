// ops::causal_conv1d_silu: the CUDA kernels as an autograd function, else LibTorch's grouped conv1d.
// Shapes: B batch, T tokens, C channels, W convolution width.
#include "dla/ops/causal_conv.h"

#include <ATen/ops/conv1d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/silu.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/kernel_buffers.h"
#include "dla/ops/kernels.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "causal_conv_kernels.h"
#endif

namespace dla::ops {
namespace {

at::Tensor causal_conv_aten(const at::Tensor& x_BTC, const at::Tensor& weight_CW, const at::Tensor& bias_C) {
  const int64_t T = x_BTC.size(1), C = x_BTC.size(2), W = weight_CW.size(1);
  // Padding W − 1 on both sides and keeping the first T outputs makes the convolution causal.
  // In x's dtype, as the kernels return it (autocast, where on, casts all three to its dtype anyway).
  const at::Tensor weight_C1W = weight_CW.to(x_BTC.scalar_type()).unsqueeze(1);
  const at::Tensor bias = bias_C.defined() ? bias_C.to(x_BTC.scalar_type()) : bias_C;
  const at::Tensor y_BCT = at::conv1d(x_BTC.transpose(1, 2), weight_C1W, bias, /*stride=*/1,
                                      /*padding=*/W - 1, /*dilation=*/1, /*groups=*/C)
                               .narrow(/*dim=*/2, /*start=*/0, /*length=*/T);
  return at::silu(y_BCT).transpose(1, 2);
}

#if defined(DLA_WITH_CUDA)
bool kernel_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

kernels::CausalConvDims dims_of(const at::Tensor& x_BTC, int64_t width) {
  return {.batch = x_BTC.size(0),
          .tokens = x_BTC.size(1),
          .channels = x_BTC.size(2),
          .width = width,
          .batch_stride = x_BTC.stride(0),
          .token_stride = x_BTC.stride(1),
          .dtype = x_BTC.scalar_type() == at::kBFloat16 ? kernels::ConvDtype::bfloat16
                                                        : kernels::ConvDtype::float32};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The fused convolution: saves x (as the caller's view: the kernels read its strides) and the float32
/// weight and bias; the backward is one kernel plus the sums of the blocks' weight- and bias-gradient
/// partials. An absent bias comes in as an empty tensor with has_bias false.
struct FusedCausalConvSilu : torch::autograd::Function<FusedCausalConvSilu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_BTC, const at::Tensor& weight_CW,
                            const at::Tensor& bias_or_empty, bool has_bias) {
    const c10::cuda::CUDAGuard device_guard(x_BTC.device());
    const at::Tensor weight = weight_CW.to(at::kFloat).contiguous();
    const at::Tensor bias = has_bias ? bias_or_empty.to(at::kFloat).contiguous() : at::Tensor();
    const kernels::CausalConvDims dims = dims_of(x_BTC, weight.size(1));
    at::Tensor y = at::empty({dims.batch, dims.tokens, dims.channels}, x_BTC.options());
    const char* error =
        kernels::causal_conv_forward(x_BTC.data_ptr(), weight.data_ptr<float>(), data_or_null(bias),
                                     y.data_ptr(), dims, current_cuda_stream(x_BTC));
    TORCH_CHECK(error == nullptr, "causal_conv1d_silu forward: CUDA kernel failed: ", error);
    ctx->save_for_backward({x_BTC, weight, has_bias ? bias : at::empty({0}, weight.options())});
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight_CW.scalar_type());
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias_or_empty.scalar_type());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const at::Tensor bias = has_bias ? saved[2] : at::Tensor();
    const c10::cuda::CUDAGuard device_guard(x.device());
    const at::Tensor dy = grad_outputs[0].to(x.scalar_type()).contiguous();
    const kernels::CausalConvDims dims = dims_of(x, weight.size(1));
    at::Tensor dx = at::empty({dims.batch, dims.tokens, dims.channels}, x.options());
    const int64_t partials = kernels::causal_conv_partials(dims);
    at::Tensor dweight_partials = at::empty({partials, dims.channels, dims.width}, weight.options());
    at::Tensor dbias_partials = at::empty({partials, dims.channels}, weight.options());
    const char* error = kernels::causal_conv_backward(
        x.data_ptr(), weight.data_ptr<float>(), data_or_null(bias), dy.data_ptr(), dx.data_ptr(),
        dweight_partials.data_ptr<float>(), dbias_partials.data_ptr<float>(), dims, current_cuda_stream(x));
    TORCH_CHECK(error == nullptr, "causal_conv1d_silu backward: CUDA kernel failed: ", error);
    const auto dtype = [&](const char* key) {
      return static_cast<at::ScalarType>(ctx->saved_data[key].toInt());
    };
    return {dx, dweight_partials.sum(/*dim=*/0).to(dtype("weight_dtype")),
            has_bias ? dbias_partials.sum(/*dim=*/0).to(dtype("bias_dtype")) : at::Tensor(), at::Tensor()};
  }
};
#endif

}  // namespace

bool causal_conv_uses_cuda_kernel([[maybe_unused]] const at::Tensor& x_BTC,
                                  [[maybe_unused]] const at::Tensor& weight_CW,
                                  [[maybe_unused]] const at::Tensor& bias_C) {
#if defined(DLA_WITH_CUDA)
  if (!x_BTC.is_cuda() || !kernel_dtype(x_BTC) || !use_fused_kernels(x_BTC) || x_BTC.stride(2) != 1)
    return false;
  if (!kernel_dtype(weight_CW) || weight_CW.device() != x_BTC.device()) return false;
  if (bias_C.defined() && (!kernel_dtype(bias_C) || bias_C.device() != x_BTC.device())) return false;
  return kernels::causal_conv_supports(dims_of(x_BTC, weight_CW.size(1)));
#else
  return false;
#endif
}

at::Tensor causal_conv1d_silu(const at::Tensor& x_BTC, const at::Tensor& weight_CW,
                              const at::Tensor& bias_C) {
  TORCH_CHECK(x_BTC.dim() == 3, "causal_conv1d_silu: x must be [B, T, C], got ", x_BTC.sizes());
  TORCH_CHECK(weight_CW.dim() == 2 && weight_CW.size(0) == x_BTC.size(2) && weight_CW.size(1) >= 1,
              "causal_conv1d_silu: weight must be [C, W] with C = ", x_BTC.size(2), ", got ",
              weight_CW.sizes());
  TORCH_CHECK(!bias_C.defined() || (bias_C.dim() == 1 && bias_C.size(0) == x_BTC.size(2)),
              "causal_conv1d_silu: bias must be [C] with C = ", x_BTC.size(2), ", got ", bias_C.sizes());
#if defined(DLA_WITH_CUDA)
  if (causal_conv_uses_cuda_kernel(x_BTC, weight_CW, bias_C)) {
    return FusedCausalConvSilu::apply(
        x_BTC, weight_CW, bias_C.defined() ? bias_C : at::empty({0}, weight_CW.options()), bias_C.defined());
  }
#endif
  return causal_conv_aten(x_BTC, weight_CW, bias_C);
}

}  // namespace dla::ops
