// ops::to_head_major and ops::from_head_major: the CUDA kernel as autograd functions, else LibTorch ops.
#include "dla/ops/head_major.h"

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/kernel_buffers.h"
#include "dla/ops/kernels.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "head_major_kernels.h"
#endif

namespace dla::ops {
namespace {

#if defined(DLA_WITH_CUDA)
std::optional<kernels::ElementType> element_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return kernels::ElementType::float32;
    case at::kBFloat16:
      return kernels::ElementType::bfloat16;
    case at::kHalf:
      return kernels::ElementType::float16;
    default:
      return std::nullopt;
  }
}

/// A contiguous copy of x where x's data does not start on the 16-byte vectors the kernel moves.
at::Tensor kernel_input(const at::Tensor& x) {
  at::Tensor in = x.contiguous();
  if (reinterpret_cast<uintptr_t>(in.data_ptr()) % 16 != 0) in = in.clone();
  return in;
}

/// (x + added) · scale with x of [B, J, I, ...] as a new contiguous [B, I, J, ...] tensor of `dtype`, by the
/// kernel; `added` (x's shape and dtype) may be undefined.
at::Tensor swap_middle_dims(const at::Tensor& x, const at::Tensor& added, double scale,
                            at::ScalarType dtype) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor in = kernel_input(x), in_added = added.defined() ? kernel_input(added) : at::Tensor();
  std::vector<int64_t> shape = in.sizes().vec();
  std::swap(shape[1], shape[2]);
  at::Tensor out = at::empty(shape, in.options().dtype(dtype));
  const int64_t entries = in.numel() / (shape[0] * shape[1] * shape[2]);
  const char* error = kernels::swap_middle_dims(
      in.data_ptr(), in_added.defined() ? in_added.data_ptr() : nullptr, static_cast<float>(scale),
      *element_type(in.scalar_type()), out.data_ptr(), *element_type(dtype), shape[0], shape[1], shape[2],
      entries, current_cuda_stream(in));
  TORCH_CHECK(error == nullptr, "head-major layout: CUDA kernel failed: ", error);
  return out;
}

/// The kernel both ways: the gradient goes back to x's layout and dtype.
struct ToHeadMajorFunction : torch::autograd::Function<ToHeadMajorFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_BTH_,
                            at::ScalarType dtype) {
    ctx->saved_data["dtype"] = static_cast<int64_t>(x_BTH_.scalar_type());
    return swap_middle_dims(x_BTH_, at::Tensor(), 1.0, dtype);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const at::Tensor& grad = grad_outputs[0];
    if (!element_type(grad.scalar_type())) return {grad.movedim(1, 2).to(dtype), at::Tensor()};
    return {swap_middle_dims(grad, at::Tensor(), 1.0, dtype), at::Tensor()};
  }
};

/// The kernel both ways: both inputs get scale times the gradient, back in their layout and dtype.
struct FromHeadMajorFunction : torch::autograd::Function<FromHeadMajorFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a_BHT_,
                            const at::Tensor& b_BHT_, double scale, at::ScalarType dtype) {
    ctx->saved_data["dtype"] = static_cast<int64_t>(a_BHT_.scalar_type());
    ctx->saved_data["scale"] = scale;
    return swap_middle_dims(a_BHT_, b_BHT_, scale, dtype);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor& grad = grad_outputs[0];
    const at::Tensor grad_BHT_ = element_type(grad.scalar_type())
                                     ? swap_middle_dims(grad, at::Tensor(), scale, dtype)
                                     : (grad.to(dtype) * scale).movedim(1, 2);
    return {grad_BHT_, grad_BHT_, at::Tensor(), at::Tensor()};
  }
};
#endif

}  // namespace

bool to_head_major_uses_cuda_kernel([[maybe_unused]] const at::Tensor& x_BTH_,
                                    [[maybe_unused]] at::ScalarType dtype) {
#if defined(DLA_WITH_CUDA)
  return x_BTH_.is_cuda() && x_BTH_.dim() >= 3 && dtype == at::kFloat &&
         element_type(x_BTH_.scalar_type()).has_value() && use_fused_kernels(x_BTH_);
#else
  return false;
#endif
}

at::Tensor to_head_major(const at::Tensor& x_BTH_, at::ScalarType dtype) {
  TORCH_CHECK(x_BTH_.dim() >= 3, "to_head_major: expected [B, T, H, ...], got ", x_BTH_.sizes());
#if defined(DLA_WITH_CUDA)
  if (to_head_major_uses_cuda_kernel(x_BTH_, dtype)) return ToHeadMajorFunction::apply(x_BTH_, dtype);
#endif
  return x_BTH_.movedim(1, 2).to(dtype, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
}

bool from_head_major_uses_cuda_kernel([[maybe_unused]] const at::Tensor& a_BHT_,
                                      [[maybe_unused]] const at::Tensor& b_BHT_,
                                      [[maybe_unused]] at::ScalarType dtype) {
#if defined(DLA_WITH_CUDA)
  return a_BHT_.is_cuda() && a_BHT_.dim() >= 3 && a_BHT_.scalar_type() == at::kFloat &&
         b_BHT_.sizes() == a_BHT_.sizes() && b_BHT_.scalar_type() == at::kFloat &&
         b_BHT_.device() == a_BHT_.device() && element_type(dtype).has_value() && use_fused_kernels(a_BHT_);
#else
  return false;
#endif
}

at::Tensor from_head_major(const at::Tensor& a_BHT_, const at::Tensor& b_BHT_, double scale,
                           at::ScalarType dtype) {
  TORCH_CHECK(a_BHT_.dim() >= 3 && b_BHT_.sizes() == a_BHT_.sizes(),
              "from_head_major: expected two [B, H, T, ...] tensors of one shape, got ", a_BHT_.sizes(),
              " and ", b_BHT_.sizes());
#if defined(DLA_WITH_CUDA)
  if (from_head_major_uses_cuda_kernel(a_BHT_, b_BHT_, dtype))
    return FromHeadMajorFunction::apply(a_BHT_, b_BHT_, scale, dtype);
#endif
  return ((a_BHT_ + b_BHT_) * scale)
      .movedim(1, 2)
      .to(dtype, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
}

}  // namespace dla::ops
