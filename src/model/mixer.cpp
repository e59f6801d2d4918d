// The short causal convolution with its decoding tail, and the size of a mixer's cache.
// Shapes: B batch, T tokens, C channels, W convolution width.
#include "dla/model/mixer.h"

#include <ATen/ATen.h>

#include "dla/ops/causal_conv.h"

namespace dla::model {

int64_t MixerCache::size_bytes() const {
  int64_t bytes = memory ? memory->size_bytes() : 0;
  for (const at::Tensor& tail : conv_tails)
    bytes += tail.numel() * static_cast<int64_t>(tail.element_size());
  return bytes;
}

at::Tensor causal_conv_silu(const at::Tensor& x_BTC, torch::nn::Conv1d& conv, at::Tensor* tail_BWC) {
  const int64_t T = x_BTC.size(1);
  const int64_t width = conv->options.kernel_size()->at(0);
  const at::Tensor weight_CW = conv->weight.view({conv->weight.size(0), width});  // the module's [C, 1, W]
  if (tail_BWC == nullptr) return ops::causal_conv1d_silu(x_BTC, weight_CW, conv->bias);
  const at::Tensor tail = tail_BWC->defined()
                              ? tail_BWC->to(x_BTC.scalar_type())
                              : at::zeros({x_BTC.size(0), width - 1, x_BTC.size(2)}, x_BTC.options());
  const at::Tensor input_BXC = at::cat({tail, x_BTC}, /*dim=*/1);
  *tail_BWC = input_BXC.narrow(1, input_BXC.size(1) - (width - 1), width - 1).detach();
  // With W − 1 real inputs in front, the outputs from position W − 1 on read no padding.
  return ops::causal_conv1d_silu(input_BXC, weight_CW, conv->bias).narrow(1, width - 1, T);
}

}  // namespace dla::model
