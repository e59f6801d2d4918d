// Gated DeltaNet mixer with flash-linear-attention's parameter names, shapes and forward pass
// (fla.layers.GatedDeltaNet; see docs/model.md).
// Shapes: B batch, T tokens, D model dim, H q/k heads, HV value heads, K key head dim, V value head dim.
#pragma once

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include "dla/model/mixer.h"
#include "dla/model/norm.h"
#include "dla/model/options.h"

namespace dla::model {

class GatedDeltaNetImpl : public MixerImpl {
 public:
  GatedDeltaNetImpl(int64_t hidden_size, const GdnOptions& options, double norm_eps, int64_t chunk_size,
                    const memory::MemoryOptions& memory_options = {});
  at::Tensor forward(const at::Tensor& x_BTD, MixerCache* cache = nullptr) override;
  void reset_gate_parameters() override;

  at::Tensor A_log;    ///< [HV] float32; decay rate = exp(A_log)
  at::Tensor dt_bias;  ///< [HV]
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr};  ///< [H·K, D], [H·K, D], [HV·V, D]
  torch::nn::Linear a_proj{nullptr}, b_proj{nullptr};                   ///< [HV, D] each
  torch::nn::Conv1d q_conv1d{nullptr}, k_conv1d{nullptr}, v_conv1d{nullptr};  ///< depthwise, no bias
  torch::nn::Linear g_proj{nullptr};                                          ///< [HV·V, D], with use_gate
  GatedRMSNorm o_norm{nullptr};                                               ///< over V
  torch::nn::Linear o_proj{nullptr};                                          ///< [D, HV·V]

 private:
  GdnOptions options_;
  int64_t chunk_size_;
};
TORCH_MODULE(GatedDeltaNet);

/// Inverse softplus of dt drawn log-uniformly in [dt_min, dt_max] and floored, as fla initialises dt_bias.
at::Tensor init_dt_bias(int64_t n, double dt_min = 1e-3, double dt_max = 0.1, double dt_floor = 1e-4);

}  // namespace dla::model
