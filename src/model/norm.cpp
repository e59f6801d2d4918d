// RMSNorm and the gated RMSNorm of GDN and Mamba-2.
#include "dla/model/norm.h"

#include <ATen/ATen.h>

namespace dla::model {
namespace {

at::Tensor rms_normalise(const at::Tensor& x_fp32, double eps) {
  return x_fp32 * at::rsqrt(x_fp32.pow(2).mean(/*dim=*/-1, /*keepdim=*/true) + eps);
}

}  // namespace

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x_D) {
  return (rms_normalise(x_D.to(at::kFloat), eps_) * weight.to(at::kFloat)).to(x_D.scalar_type());
}

GatedRMSNormImpl::GatedRMSNormImpl(int64_t dim, double eps, bool gate_before_norm, int64_t group_size)
    : eps_(eps), gate_before_norm_(gate_before_norm), group_size_(group_size == 0 ? dim : group_size) {
  TORCH_CHECK(dim % group_size_ == 0, "GatedRMSNorm: dim ", dim, " is not a multiple of group_size ",
              group_size_);
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor GatedRMSNormImpl::forward(const at::Tensor& x_D, const at::Tensor& z_D) {
  const auto dim = x_D.size(-1);
  at::Tensor x = x_D.to(at::kFloat);
  const at::Tensor gate = z_D.defined() ? at::silu(z_D.to(at::kFloat)) : at::Tensor();
  if (gate_before_norm_ && gate.defined()) x = x * gate;
  // Normalise each group of channels on its own: [..., D] -> [..., D/G, G].
  std::vector<int64_t> grouped = x.sizes().vec();
  grouped.back() = dim / group_size_;
  grouped.push_back(group_size_);
  x = rms_normalise(x.reshape(grouped), eps_).reshape(x_D.sizes()) * weight.to(at::kFloat);
  if (!gate_before_norm_ && gate.defined()) x = x * gate;
  return x.to(x_D.scalar_type());
}

}  // namespace dla::model
