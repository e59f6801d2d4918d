// The short causal convolution with its decoding tail, and the size of a mixer's cache.
// Shapes: B batch, T tokens, C channels, W convolution width.
#include "dla/model/mixer.h"

#include <ATen/ATen.h>

namespace dla::model {

int64_t MixerCache::size_bytes() const {
  int64_t bytes = memory ? memory->size_bytes() : 0;
  for (const at::Tensor& tail : conv_tails)
    bytes += tail.numel() * static_cast<int64_t>(tail.element_size());
  return bytes;
}

at::Tensor causal_conv_silu(const at::Tensor& x_BTC, torch::nn::Conv1d& conv, at::Tensor* tail_BWC) {
  const int64_t T = x_BTC.size(1);
  if (tail_BWC == nullptr) {
    // The convolution pads W − 1 on both sides; keeping the first T outputs makes it causal.
    const at::Tensor y_BCT =
        conv->forward(x_BTC.transpose(1, 2)).narrow(/*dim=*/2, /*start=*/0, /*length=*/T);
    return at::silu(y_BCT.transpose(1, 2));
  }
  const int64_t width = conv->options.kernel_size()->at(0);
  const at::Tensor tail = tail_BWC->defined()
                              ? tail_BWC->to(x_BTC.scalar_type())
                              : at::zeros({x_BTC.size(0), width - 1, x_BTC.size(2)}, x_BTC.options());
  const at::Tensor input_BXC = at::cat({tail, x_BTC}, /*dim=*/1);
  *tail_BWC = input_BXC.narrow(1, input_BXC.size(1) - (width - 1), width - 1).detach();
  // With W − 1 real inputs in front, output j of the padded convolution reads inputs j − W + 1 .. j.
  const at::Tensor y_BCT = conv->forward(input_BXC.transpose(1, 2)).narrow(2, width - 1, T);
  return at::silu(y_BCT.transpose(1, 2));
}

}  // namespace dla::model
