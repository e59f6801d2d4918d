// RMSNorm and the gated RMSNorm of GDN and Mamba-2, both through ops::rms_norm (fused on CUDA).
#include "dla/model/norm.h"

#include <ATen/ATen.h>

#include "dla/ops/rms_norm.h"

namespace dla::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x_D) {
  return ops::rms_norm(x_D, weight, at::Tensor(), {.eps = eps_});
}

GatedRMSNormImpl::GatedRMSNormImpl(int64_t dim, double eps, bool gate_before_norm, int64_t group_size)
    : eps_(eps), gate_before_norm_(gate_before_norm), group_size_(group_size == 0 ? dim : group_size) {
  TORCH_CHECK(dim % group_size_ == 0, "GatedRMSNorm: dim ", dim, " is not a multiple of group_size ",
              group_size_);
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor GatedRMSNormImpl::forward(const at::Tensor& x_D, const at::Tensor& z_D) {
  return ops::rms_norm(x_D, weight, z_D,
                       {.eps = eps_, .group_size = group_size_, .gate_before_norm = gate_before_norm_});
}

}  // namespace dla::model
