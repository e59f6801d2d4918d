// SSD, chunkwise-parallel form in LibTorch: the gated delta rule's chunk pipeline without the WY stage, since
// a chunk writes its values unchanged (docs/ops/ssd.md).
// Shapes: B batch, T tokens, H heads, N state dim, P head dim, M chunks, C chunk length.
#include <c10/util/Exception.h>

#include "dla/ops/fused.h"
#include "dla/ops/kernels.h"
#include "dla/ops/ssd.h"

namespace dla::ops::ssd {

OpResult chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
               double scale, const at::Tensor& initial_state, int64_t chunk_size) {
  if (use_fused_kernels(q)) return fused::chunk(q, k, v, g, at::Tensor(), scale, initial_state, chunk_size);
  common::check_inputs("ssd::chunk", q, k, v, g, initial_state);
  TORCH_CHECK(chunk_size >= 1, "ssd::chunk: chunk_size must be at least 1, got ", chunk_size);
  const at::ScalarType dtype = common::compute_dtype({q, k, v, g, initial_state});

  const at::Tensor q_BHMCN = common::to_chunks(q, chunk_size, dtype);
  const at::Tensor k_BHMCN = common::to_chunks(k, chunk_size, dtype);
  const at::Tensor v_BHMCP = common::to_chunks(v, chunk_size, dtype);
  const at::Tensor gamma_BHMC = common::cumsum_gates(common::to_chunks(g, chunk_size, dtype));
  const at::Tensor decay_BHMCC = common::decay_matrix(gamma_BHMC);

  const common::StatePass pass =
      common::state_pass(k_BHMCN, v_BHMCP, /*w_BHMCK=*/at::Tensor(), gamma_BHMC,
                         common::initial_state_or_zeros(initial_state, k, v, dtype));
  const at::Tensor out_BHMCP = common::chunk_output(q_BHMCN, k_BHMCN, pass.v_new_BHMCV, gamma_BHMC,
                                                    decay_BHMCC, pass.states_BHMKV, scale);
  return {common::from_chunks(out_BHMCP, q.size(1)).to(q.scalar_type()), pass.final_state_BHKV};
}

}  // namespace dla::ops::ssd
