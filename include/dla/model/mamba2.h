// Mamba-2 mixer with flash-linear-attention's parameter names, shapes and forward pass
// (fla.layers.Mamba2; see docs/model.md).
// Shapes: B batch, T tokens, D model dim, H heads, P head dim, G groups, N state size, I = H·P inner dim.
#pragma once

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include "dla/model/mixer.h"
#include "dla/model/norm.h"
#include "dla/model/options.h"

namespace dla::model {

class Mamba2Impl : public MixerImpl {
 public:
  Mamba2Impl(int64_t hidden_size, const Mamba2Options& options, double norm_eps, int64_t chunk_size,
             const memory::MemoryOptions& memory_options = {});
  at::Tensor forward(const at::Tensor& x_BTD, MixerCache* cache = nullptr) override;
  void reset_gate_parameters() override;

  at::Tensor dt_bias;                   ///< [H]
  at::Tensor A_log;                     ///< [H] float32; A = −exp(A_log)
  at::Tensor D;                         ///< [H] skip connection, initialised to ones
  torch::nn::Conv1d conv1d{nullptr};    ///< depthwise over x|B|C: [I + 2GN, 1, W]
  torch::nn::Linear in_proj{nullptr};   ///< [2I + 2GN + H, D]: z | x B C | dt
  GatedRMSNorm norm{nullptr};           ///< gate first, then RMS over groups of I/G
  torch::nn::Linear out_proj{nullptr};  ///< [D, I]

 private:
  Mamba2Options options_;
  int64_t num_heads_;
  int64_t inner_dim_;
  int64_t chunk_size_;
};
TORCH_MODULE(Mamba2);

}  // namespace dla::model
