// Gated delta rule, naive form: the per-token recurrence in float32 (float64 for float64 inputs), written to
// be read. It is the definition the chunked form is tested against.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim.
#include <vector>

#include <ATen/ops/stack.h>

#include "dla/ops/gdn.h"

namespace dla::ops::gdn {

OpResult naive_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                         const at::Tensor& beta, double scale, const at::Tensor& initial_state) {
  common::check_inputs("gdn::naive_recurrent", q, k, v, g, initial_state);
  common::check_token_gate("gdn::naive_recurrent", "beta", beta, q);
  const at::ScalarType dtype = common::compute_dtype({q, k, v, g, beta, initial_state});

  const std::vector<at::Tensor> q_BHK = (q.to(dtype) * scale).unbind(1);
  const std::vector<at::Tensor> k_BHK = k.to(dtype).unbind(1);
  const std::vector<at::Tensor> v_BHV = v.to(dtype).unbind(1);
  const std::vector<at::Tensor> alpha_BH = g.to(dtype).exp().unbind(1);
  const std::vector<at::Tensor> beta_BH = beta.to(dtype).unbind(1);
  at::Tensor state_BHKV = common::initial_state_or_zeros(initial_state, k, v, dtype);

  std::vector<at::Tensor> out_BHV;
  for (std::size_t t = 0; t < q_BHK.size(); ++t) {
    // Decay first; the delta then corrects what the decayed state predicts for k_t.
    state_BHKV = alpha_BH[t].unsqueeze(-1).unsqueeze(-1) * state_BHKV;
    const at::Tensor predicted_BHV = k_BHK[t].unsqueeze(-2).matmul(state_BHKV).squeeze(-2);
    const at::Tensor delta_BHV = beta_BH[t].unsqueeze(-1) * (v_BHV[t] - predicted_BHV);
    state_BHKV = state_BHKV + k_BHK[t].unsqueeze(-1) * delta_BHV.unsqueeze(-2);
    // The read uses the updated state.
    out_BHV.push_back(q_BHK[t].unsqueeze(-2).matmul(state_BHKV).squeeze(-2));
  }
  return {at::stack(out_BHV, 1).to(q.scalar_type()), state_BHKV};
}

}  // namespace dla::ops::gdn
