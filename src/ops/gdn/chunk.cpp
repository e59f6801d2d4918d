// Gated delta rule, chunkwise-parallel form in LibTorch: the stages are the gate cumsum, the WY
// representation within each chunk, the state pass over chunks and the chunk output (docs/ops/gdn.md).
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, M chunks, C chunk length.
#include <ATen/ops/cat.h>
#include <ATen/ops/linalg_solve_triangular.h>
#include <c10/util/Exception.h>

#include "dla/ops/fused.h"
#include "dla/ops/gdn.h"
#include "dla/ops/kernels.h"

namespace dla::ops::gdn {

WyRepr wy_repr(const at::Tensor& k_BHMCK, const at::Tensor& v_BHMCV, const at::Tensor& beta_BHMC,
               const at::Tensor& gamma_BHMC, const at::Tensor& decay_BHMCC) {
  const at::Tensor beta_BHMC1 = beta_BHMC.unsqueeze(-1);
  const at::Tensor a_BHMCC =
      (beta_BHMC1 * k_BHMCK.matmul(k_BHMCK.transpose(-1, -2)) * decay_BHMCC).tril(/*diagonal=*/-1);
  // w and u share T = (I + A)^-1, so one solve serves both right-hand sides. With unitriangular the solver
  // takes the unit diagonal as given, so passing the strictly lower A solves with I + A.
  const at::Tensor rhs_BHMCX =
      at::cat({beta_BHMC1 * gamma_BHMC.exp().unsqueeze(-1) * k_BHMCK, beta_BHMC1 * v_BHMCV}, /*dim=*/-1);
  const at::Tensor wu_BHMCX =
      at::linalg_solve_triangular(a_BHMCC, rhs_BHMCX, /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
  const int64_t key_dim = k_BHMCK.size(-1);
  return {wu_BHMCX.narrow(-1, 0, key_dim), wu_BHMCX.narrow(-1, key_dim, v_BHMCV.size(-1))};
}

OpResult chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
               const at::Tensor& beta, double scale, const at::Tensor& initial_state, int64_t chunk_size) {
  if (use_fused_kernels(q)) return fused::chunk(q, k, v, g, beta, scale, initial_state, chunk_size);
  common::check_inputs("gdn::chunk", q, k, v, g, initial_state);
  common::check_token_gate("gdn::chunk", "beta", beta, q);
  TORCH_CHECK(chunk_size >= 1, "gdn::chunk: chunk_size must be at least 1, got ", chunk_size);
  const at::ScalarType dtype = common::compute_dtype({q, k, v, g, beta, initial_state});

  const at::Tensor q_BHMCK = common::to_chunks(q, chunk_size, dtype);
  const at::Tensor k_BHMCK = common::to_chunks(k, chunk_size, dtype);
  const at::Tensor v_BHMCV = common::to_chunks(v, chunk_size, dtype);
  const at::Tensor beta_BHMC = common::to_chunks(beta, chunk_size, dtype);
  const at::Tensor gamma_BHMC = common::cumsum_gates(common::to_chunks(g, chunk_size, dtype));
  const at::Tensor decay_BHMCC = common::decay_matrix(gamma_BHMC);

  const WyRepr wy = wy_repr(k_BHMCK, v_BHMCV, beta_BHMC, gamma_BHMC, decay_BHMCC);
  const common::StatePass pass =
      common::state_pass(k_BHMCK, wy.u_BHMCV, wy.w_BHMCK, gamma_BHMC,
                         common::initial_state_or_zeros(initial_state, k, v, dtype));
  const at::Tensor out_BHMCV = common::chunk_output(q_BHMCK, k_BHMCK, pass.v_new_BHMCV, gamma_BHMC,
                                                    decay_BHMCC, pass.states_BHMKV, scale);
  return {common::from_chunks(out_BHMCV, q.size(1)).to(q.scalar_type()), pass.final_state_BHKV};
}

}  // namespace dla::ops::gdn
