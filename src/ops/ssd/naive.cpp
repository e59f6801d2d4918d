// SSD, naive form: the per-token recurrence in float32 (float64 for float64 inputs), written to be read. It
// is the definition the chunked form is tested against.
// Shapes: B batch, T tokens, H heads, N state dim, P head dim.
#include <vector>

#include <ATen/ops/stack.h>

#include "dla/ops/ssd.h"

namespace dla::ops::ssd {

OpResult naive_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                         double scale, const at::Tensor& initial_state) {
  common::check_inputs("ssd::naive_recurrent", q, k, v, g, initial_state);
  const at::ScalarType dtype = common::compute_dtype({q, k, v, g, initial_state});

  const std::vector<at::Tensor> q_BHN = (q.to(dtype) * scale).unbind(1);
  const std::vector<at::Tensor> k_BHN = k.to(dtype).unbind(1);
  const std::vector<at::Tensor> v_BHP = v.to(dtype).unbind(1);
  const std::vector<at::Tensor> alpha_BH = g.to(dtype).exp().unbind(1);
  at::Tensor state_BHNP = common::initial_state_or_zeros(initial_state, k, v, dtype);

  std::vector<at::Tensor> out_BHP;
  for (std::size_t t = 0; t < q_BHN.size(); ++t) {
    state_BHNP = alpha_BH[t].unsqueeze(-1).unsqueeze(-1) * state_BHNP +
                 k_BHN[t].unsqueeze(-1) * v_BHP[t].unsqueeze(-2);
    out_BHP.push_back(q_BHN[t].unsqueeze(-2).matmul(state_BHNP).squeeze(-2));
  }
  return {at::stack(out_BHP, 1).to(q.scalar_type()), state_BHNP};
}

}  // namespace dla::ops::ssd
