// fused::unit_lower_inverse: the CUDA kernel where it applies, else LibTorch's triangular solve against I;
// and the same as an autograd function with the inverse's closed-form gradient.
#include <cstdint>

#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_solve_triangular.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/fused.h"
#include "dla/ops/kernel_buffers.h"
#include "kernels.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#endif

namespace dla::ops::fused {

at::Tensor unit_lower_inverse(const at::Tensor& a_CC) {
  const int64_t n = a_CC.size(-1);
#if defined(DLA_WITH_CUDA)
  if (a_CC.is_cuda() && a_CC.scalar_type() == at::kFloat && kernels::supports_unit_lower_inverse(n)) {
    const c10::cuda::CUDAGuard device_guard(a_CC.device());
    const at::Tensor a = kernel_buffer(a_CC);
    at::Tensor t = at::empty_like(a);
    const char* error = kernels::unit_lower_inverse(a.data_ptr<float>(), t.data_ptr<float>(),
                                                    a.numel() / (n * n), n, current_cuda_stream(a));
    TORCH_CHECK(error == nullptr, "fused unit_lower_inverse: CUDA kernel failed: ", error);
    return t;
  }
#endif
  // With unitriangular the solver takes the unit diagonal as given, so the strictly lower part is all it
  // reads.
  return at::linalg_solve_triangular(a_CC, at::eye(n, a_CC.options()).expand_as(a_CC), /*upper=*/false,
                                     /*left=*/true, /*unitriangular=*/true);
}

namespace {

/// Keeps only T for the backward: with T = (I + A)⁻¹, dT = −T dA T, so dA = −Tᵀ dT Tᵀ.
struct UnitLowerInverseFunction : torch::autograd::Function<UnitLowerInverseFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a_CC) {
    at::Tensor t_CC = unit_lower_inverse(a_CC);
    ctx->save_for_backward({t_CC});
    return t_CC;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor t_transposed_CC = ctx->get_saved_variables()[0].transpose(-1, -2);
    return {(-t_transposed_CC.matmul(grad_outputs[0]).matmul(t_transposed_CC)).tril(/*diagonal=*/-1)};
  }
};

}  // namespace

at::Tensor differentiable_unit_lower_inverse(const at::Tensor& a_CC) {
  return UnitLowerInverseFunction::apply(a_CC);
}

}  // namespace dla::ops::fused
