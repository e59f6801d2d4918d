// ops::rms_norm: the fused CUDA kernels as an autograd function, else LibTorch ops.
// Shapes: D the last dim, G the group size, R rows (groups) in all.
#include "dla/ops/rms_norm.h"

#include <vector>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/kernel_buffers.h"
#include "dla/ops/kernels.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "rms_norm_kernels.h"
#endif

namespace dla::ops {
namespace {

int64_t group_size_of(const at::Tensor& x_D, const RmsNormOptions& options) {
  return options.group_size == 0 ? x_D.size(-1) : options.group_size;
}

at::Tensor rms_norm_aten(const at::Tensor& x_D, const at::Tensor& weight_D, const at::Tensor& z_D,
                         const RmsNormOptions& options) {
  const auto compute = x_D.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t group = group_size_of(x_D, options);
  at::Tensor a = x_D.to(compute);
  const at::Tensor gate = z_D.defined() ? at::silu(z_D.to(compute)) : at::Tensor();
  if (options.gate_before_norm && gate.defined()) a = a * gate;
  // Each group of channels on its own: [..., D] -> [..., D/G, G].
  std::vector<int64_t> grouped = a.sizes().vec();
  grouped.back() /= group;
  grouped.push_back(group);
  const at::Tensor a_G = a.reshape(grouped);
  const at::Tensor squares_G = a_G.pow(2);
  const at::Tensor power_1 = options.mean ? squares_G.mean(/*dim=*/-1, /*keepdim=*/true)
                                          : squares_G.sum(/*dim=*/-1, /*keepdim=*/true);
  at::Tensor y = (a_G * at::rsqrt(power_1 + options.eps)).reshape(x_D.sizes());
  if (weight_D.defined()) y = y * weight_D.to(compute);
  if (!options.gate_before_norm && gate.defined()) y = y * gate;
  return y.to(x_D.scalar_type());
}

#if defined(DLA_WITH_CUDA)
bool kernel_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

kernels::NormDtype norm_dtype(const at::Tensor& t) {
  return t.defined() && t.scalar_type() == at::kBFloat16 ? kernels::NormDtype::bfloat16
                                                         : kernels::NormDtype::float32;
}

kernels::RmsNormDims dims_of(const at::Tensor& x, const at::Tensor& z, const RmsNormOptions& options) {
  const int64_t group = group_size_of(x, options);
  return {.rows = x.numel() / group,
          .group_size = group,
          .dim = x.size(-1),
          .eps = static_cast<float>(options.eps),
          .mean = options.mean,
          .gate_before_norm = options.gate_before_norm,
          .x_dtype = norm_dtype(x),
          .z_dtype = norm_dtype(z)};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// An absent tensor as the empty tensor that autograd functions take in its place.
at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

/// The fused norm: saves x, the weight, z and the reciprocal RMS of every group; the backward is one kernel
/// plus the sum of the blocks' weight-gradient partials. An absent weight or gate comes in as an empty tensor
/// with its flag false.
struct FusedRmsNorm : torch::autograd::Function<FusedRmsNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_D, const at::Tensor& weight_or_empty,
                            const at::Tensor& z_or_empty, double eps, int64_t group_size, bool mean,
                            bool gate_before_norm, bool has_weight, bool has_gate) {
    const RmsNormOptions options{
        .eps = eps, .group_size = group_size, .mean = mean, .gate_before_norm = gate_before_norm};
    const c10::cuda::CUDAGuard device_guard(x_D.device());
    const at::Tensor x = kernel_buffer(x_D);
    const at::Tensor weight = has_weight ? kernel_buffer(weight_or_empty) : at::Tensor();
    const at::Tensor z = has_gate ? kernel_buffer(z_or_empty) : at::Tensor();
    const kernels::RmsNormDims dims = dims_of(x, z, options);
    at::Tensor y = at::empty_like(x);
    at::Tensor rstd_R = at::empty({dims.rows}, x.options().dtype(at::kFloat));
    const char* error =
        kernels::rms_norm_forward(x.data_ptr(), data_or_null(weight), untyped_data_or_null(z), y.data_ptr(),
                                  rstd_R.data_ptr<float>(), dims, current_cuda_stream(x));
    TORCH_CHECK(error == nullptr, "rms_norm forward: CUDA kernel failed: ", error);
    ctx->save_for_backward({x, or_empty(weight, x), or_empty(z, x), rstd_R});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["mean"] = mean;
    ctx->saved_data["gate_before_norm"] = gate_before_norm;
    ctx->saved_data["has_weight"] = has_weight;
    ctx->saved_data["has_gate"] = has_gate;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor weight = ctx->saved_data["has_weight"].toBool() ? saved[1] : at::Tensor();
    const at::Tensor z = ctx->saved_data["has_gate"].toBool() ? saved[2] : at::Tensor();
    const at::Tensor& rstd_R = saved[3];
    const RmsNormOptions options{.eps = ctx->saved_data["eps"].toDouble(),
                                 .group_size = ctx->saved_data["group_size"].toInt(),
                                 .mean = ctx->saved_data["mean"].toBool(),
                                 .gate_before_norm = ctx->saved_data["gate_before_norm"].toBool()};
    const c10::cuda::CUDAGuard device_guard(x.device());
    const at::Tensor dy = kernel_buffer(grad_outputs[0].to(x.scalar_type()));
    const kernels::RmsNormDims dims = dims_of(x, z, options);
    at::Tensor dx = at::empty_like(x);
    at::Tensor dz = z.defined() ? at::empty_like(z) : at::Tensor();
    at::Tensor partials =
        weight.defined() ? at::empty({kernels::rms_norm_weight_partials(dims), dims.dim}, weight.options())
                         : at::Tensor();
    const char* error = kernels::rms_norm_backward(
        x.data_ptr(), data_or_null(weight), untyped_data_or_null(z), rstd_R.data_ptr<float>(), dy.data_ptr(),
        dx.data_ptr(), untyped_data_or_null(dz), weight.defined() ? partials.data_ptr<float>() : nullptr,
        dims, current_cuda_stream(x));
    TORCH_CHECK(error == nullptr, "rms_norm backward: CUDA kernel failed: ", error);
    const at::Tensor dweight = weight.defined() ? partials.sum(/*dim=*/0) : at::Tensor();
    return {dx,           dweight,      dz,           at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
#endif

}  // namespace

bool rms_norm_uses_cuda_kernel([[maybe_unused]] const at::Tensor& x_D,
                               [[maybe_unused]] const at::Tensor& weight_D,
                               [[maybe_unused]] const at::Tensor& z_D,
                               [[maybe_unused]] const RmsNormOptions& options) {
#if defined(DLA_WITH_CUDA)
  if (!x_D.is_cuda() || !kernel_dtype(x_D) || !use_fused_kernels(x_D) || x_D.dim() == 0) return false;
  if (z_D.defined() && (!kernel_dtype(z_D) || z_D.sizes() != x_D.sizes() || z_D.device() != x_D.device()))
    return false;
  const int64_t dim = x_D.size(-1), group = group_size_of(x_D, options);
  if (weight_D.defined() &&
      (weight_D.scalar_type() != at::kFloat || weight_D.dim() != 1 || weight_D.size(0) != dim ||
       weight_D.device() != x_D.device() || dim > kernels::kMaxNormWeightDim))
    return false;
  return group > 0 && dim % group == 0;
#else
  return false;
#endif
}

at::Tensor rms_norm(const at::Tensor& x_D, const at::Tensor& weight_D, const at::Tensor& z_D,
                    const RmsNormOptions& options) {
  const int64_t group = group_size_of(x_D, options);
  TORCH_CHECK(group > 0 && x_D.size(-1) % group == 0, "rms_norm: the last dim ", x_D.size(-1),
              " is not a multiple of the group size ", group);
#if defined(DLA_WITH_CUDA)
  if (rms_norm_uses_cuda_kernel(x_D, weight_D, z_D, options)) {
    return FusedRmsNorm::apply(x_D, or_empty(weight_D, x_D), or_empty(z_D, x_D), options.eps, group,
                               options.mean, options.gate_before_norm, weight_D.defined(), z_D.defined());
  }
#endif
  return rms_norm_aten(x_D, weight_D, z_D, options);
}

}  // namespace dla::ops
