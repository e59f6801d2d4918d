// ops::cross_entropy: the CUDA kernels as an autograd function, else LibTorch's loss on float32 logits.
// Shapes: N rows, V the vocabulary.
#include "dla/ops/cross_entropy.h"

#include <cstdint>

#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ne.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/kernel_buffers.h"
#include "dla/ops/kernels.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "cross_entropy_kernels.h"
#endif

namespace dla::ops {
namespace {

#if defined(DLA_WITH_CUDA)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

kernels::CrossEntropyDims dims_of(const at::Tensor& logits_NV) {
  return {logits_NV.size(0), logits_NV.size(1), kIgnoreLabel, logits_NV.scalar_type() == at::kBFloat16};
}

/// Saves the logits, labels, each row's logsumexp and the count of rows not ignored (a device scalar, so
/// that the mean needs no host synchronisation).
struct FusedCrossEntropy : torch::autograd::Function<FusedCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits_NV, const at::Tensor& labels_N) {
    const c10::cuda::CUDAGuard device_guard(logits_NV.device());
    const at::Tensor labels = labels_N.contiguous();
    const auto f32 = logits_NV.options().dtype(at::kFloat);
    at::Tensor row_loss_N = at::empty({logits_NV.size(0)}, f32);
    at::Tensor logsumexp_N = at::empty({logits_NV.size(0)}, f32);
    const char* error = kernels::cross_entropy_forward(
        logits_NV.data_ptr(), labels.data_ptr<int64_t>(), row_loss_N.data_ptr<float>(),
        logsumexp_N.data_ptr<float>(), dims_of(logits_NV), current_cuda_stream(logits_NV));
    TORCH_CHECK(error == nullptr, "cross_entropy forward: CUDA kernel failed: ", error);
    const at::Tensor counted = labels.ne(kIgnoreLabel).sum().to(at::kFloat);
    ctx->save_for_backward({logits_NV, labels, logsumexp_N, counted});
    return row_loss_N.sum() / counted;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &logits_NV = saved[0], &labels = saved[1], &logsumexp_N = saved[2], &counted = saved[3];
    const c10::cuda::CUDAGuard device_guard(logits_NV.device());
    const at::Tensor d_loss = grad_outputs[0].to(at::kFloat).contiguous();
    at::Tensor d_logits_NV = at::empty_like(logits_NV);
    const char* error = kernels::cross_entropy_backward(
        logits_NV.data_ptr(), labels.data_ptr<int64_t>(), logsumexp_N.data_ptr<float>(),
        d_loss.data_ptr<float>(), counted.data_ptr<float>(), d_logits_NV.data_ptr(), dims_of(logits_NV),
        current_cuda_stream(logits_NV));
    TORCH_CHECK(error == nullptr, "cross_entropy backward: CUDA kernel failed: ", error);
    return {d_logits_NV, at::Tensor()};
  }
};
#endif

}  // namespace

bool cross_entropy_uses_cuda_kernel([[maybe_unused]] const at::Tensor& logits_NV) {
#if defined(DLA_WITH_CUDA)
  constexpr int64_t kVector = 8;
  if (!logits_NV.is_cuda() || !use_fused_kernels(logits_NV) || logits_NV.dim() != 2) return false;
  if (logits_NV.scalar_type() != at::kFloat && logits_NV.scalar_type() != at::kBFloat16) return false;
  return logits_NV.is_contiguous() && logits_NV.size(1) % kVector == 0 &&
         reinterpret_cast<std::uintptr_t>(logits_NV.data_ptr()) % 16 == 0 && logits_NV.size(0) <= INT32_MAX;
#else
  return false;
#endif
}

at::Tensor cross_entropy(const at::Tensor& logits_NV, const at::Tensor& labels_N) {
  TORCH_CHECK(logits_NV.dim() == 2 && labels_N.dim() == 1 && labels_N.size(0) == logits_NV.size(0),
              "cross_entropy: expected logits [N, V] and labels [N], got ", logits_NV.sizes(), " and ",
              labels_N.sizes());
  TORCH_CHECK(labels_N.scalar_type() == at::kLong && labels_N.device() == logits_NV.device(),
              "cross_entropy: labels must be int64 on the logits' device");
#if defined(DLA_WITH_CUDA)
  if (cross_entropy_uses_cuda_kernel(logits_NV)) return FusedCrossEntropy::apply(logits_NV, labels_N);
#endif
  const auto compute = logits_NV.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::cross_entropy_loss(logits_NV.to(compute), labels_N, /*weight=*/{}, at::Reduction::Mean,
                                kIgnoreLabel);
}

}  // namespace dla::ops
