// ops::to_head_major: the CUDA kernel as an autograd function, else LibTorch's copy.
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

/// x of [B, J, I, ...] as a new contiguous [B, I, J, ...] tensor of `dtype`, by the kernel.
at::Tensor swap_middle_dims(const at::Tensor& x, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  // The kernel moves whole 16-byte vectors: a view that starts off that alignment is copied first.
  at::Tensor in = x.contiguous();
  if (reinterpret_cast<uintptr_t>(in.data_ptr()) % 16 != 0) in = in.clone();
  std::vector<int64_t> shape = in.sizes().vec();
  std::swap(shape[1], shape[2]);
  at::Tensor out = at::empty(shape, in.options().dtype(dtype));
  const int64_t entries = in.numel() / (shape[0] * shape[1] * shape[2]);
  const char* error = kernels::swap_middle_dims(in.data_ptr(), *element_type(in.scalar_type()),
                                                out.data_ptr(), *element_type(dtype), shape[0], shape[1],
                                                shape[2], entries, current_cuda_stream(in));
  TORCH_CHECK(error == nullptr, "to_head_major: CUDA kernel failed: ", error);
  return out;
}

/// The kernel both ways: the gradient goes back to x's layout and dtype.
struct HeadMajorFunction : torch::autograd::Function<HeadMajorFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_BTH_,
                            at::ScalarType dtype) {
    ctx->saved_data["dtype"] = static_cast<int64_t>(x_BTH_.scalar_type());
    return swap_middle_dims(x_BTH_, dtype);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const at::Tensor& grad = grad_outputs[0];
    if (!element_type(grad.scalar_type())) return {grad.movedim(1, 2).to(dtype), at::Tensor()};
    return {swap_middle_dims(grad, dtype), at::Tensor()};
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
  if (to_head_major_uses_cuda_kernel(x_BTH_, dtype)) return HeadMajorFunction::apply(x_BTH_, dtype);
#endif
  return x_BTH_.movedim(1, 2).to(dtype, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
}

}  // namespace dla::ops
