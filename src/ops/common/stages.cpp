// Stages of the chunkwise-parallel form shared by the gated delta rule and SSD: chunking, gate cumsum, the
// intra-chunk decay matrix, the state pass over chunks and the chunk output. Derivations: docs/ops/gdn.md.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, M chunks, C chunk length.
#include <limits>
#include <vector>

#include <ATen/ops/baddbmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include "dla/ops/common.h"
#include "dla/ops/head_major.h"

namespace dla::ops::common {

at::Tensor to_chunks(const at::Tensor& x_BTH_, int64_t chunk_size, at::ScalarType dtype) {
  const int64_t num_tokens = x_BTH_.size(1);
  const int64_t num_chunks = (num_tokens + chunk_size - 1) / chunk_size;
  const at::Tensor x_BHT_ = x_BTH_.movedim(1, 2);
  std::vector<int64_t> chunked_shape = {x_BHT_.size(0), x_BHT_.size(1), num_chunks, chunk_size};
  for (int64_t d = 3; d < x_BHT_.dim(); ++d)
    chunked_shape.push_back(x_BHT_.size(d));
  // Without padding, one new contiguous tensor that converts and transposes: its backward is one copy, where
  // a copy into a slice of a new tensor would clone and add its gradient.
  if (num_tokens == num_chunks * chunk_size) return to_head_major(x_BTH_, dtype).view(chunked_shape);
  // Zeros first, then one copy that converts, transposes and leaves the padding: a single pass over x.
  at::Tensor chunked = at::zeros(chunked_shape, x_BTH_.options().dtype(dtype));
  std::vector<int64_t> padded_shape(x_BHT_.sizes().begin(), x_BHT_.sizes().end());
  padded_shape[2] = num_chunks * chunk_size;
  chunked.view(padded_shape).narrow(2, 0, num_tokens).copy_(x_BHT_);
  return chunked;
}

at::Tensor from_chunks(const at::Tensor& x_BHMC_, int64_t num_tokens) {
  std::vector<int64_t> shape = {x_BHMC_.size(0), x_BHMC_.size(1), x_BHMC_.size(2) * x_BHMC_.size(3)};
  for (int64_t d = 4; d < x_BHMC_.dim(); ++d)
    shape.push_back(x_BHMC_.size(d));
  return x_BHMC_.reshape(shape).narrow(2, 0, num_tokens).movedim(2, 1);
}

at::Tensor cumsum_gates(const at::Tensor& g_BHMC) {
  return g_BHMC.cumsum(-1);
}

at::Tensor decay_matrix(const at::Tensor& gamma_BHMC) {
  const int64_t chunk_size = gamma_BHMC.size(-1);
  const at::Tensor causal_CC =
      at::ones({chunk_size, chunk_size}, gamma_BHMC.options().dtype(at::kBool)).tril();
  const at::Tensor log_decay_BHMCC = gamma_BHMC.unsqueeze(-1) - gamma_BHMC.unsqueeze(-2);
  // Mask before exp: above the diagonal gamma_i - gamma_j > 0 can overflow, and inf * 0 would be NaN.
  return log_decay_BHMCC.masked_fill(causal_CC.logical_not(), -std::numeric_limits<double>::infinity()).exp();
}

StatePass state_pass(const at::Tensor& k_BHMCK, const at::Tensor& u_BHMCV, const at::Tensor& w_BHMCK,
                     const at::Tensor& gamma_BHMC, const at::Tensor& initial_state_BHKV) {
  const at::Tensor gamma_last_BHM = gamma_BHMC.select(-1, -1);
  const at::Tensor chunk_decay_BHM = gamma_last_BHM.exp();
  // Each key enters the chunk-end state decayed from its own position to the chunk's end.
  const at::Tensor k_to_end_BHMCK = k_BHMCK * (gamma_last_BHM.unsqueeze(-1) - gamma_BHMC).exp().unsqueeze(-1);
  const bool delta_rule = w_BHMCK.defined();

  const std::vector<at::Tensor> k_to_end_BHCK = k_to_end_BHMCK.unbind(2);
  const std::vector<at::Tensor> u_BHCV = u_BHMCV.unbind(2);
  const std::vector<at::Tensor> w_BHCK = delta_rule ? w_BHMCK.unbind(2) : std::vector<at::Tensor>{};
  const std::vector<at::Tensor> chunk_decay_BH = chunk_decay_BHM.unbind(2);
  std::vector<at::Tensor> states_BHKV;
  std::vector<at::Tensor> v_new_BHCV;
  at::Tensor state_BHKV = initial_state_BHKV;
  for (std::size_t m = 0; m < u_BHCV.size(); ++m) {
    states_BHKV.push_back(state_BHKV);
    v_new_BHCV.push_back(delta_rule ? u_BHCV[m] - w_BHCK[m].matmul(state_BHKV) : u_BHCV[m]);
    state_BHKV = chunk_decay_BH[m].unsqueeze(-1).unsqueeze(-1) * state_BHKV +
                 k_to_end_BHCK[m].transpose(-1, -2).matmul(v_new_BHCV.back());
  }
  return {at::stack(states_BHKV, 2), delta_rule ? at::stack(v_new_BHCV, 2) : u_BHMCV, state_BHKV};
}

at::Tensor chunk_output(const at::Tensor& q_BHMCK, const at::Tensor& k_BHMCK, const at::Tensor& v_new_BHMCV,
                        const at::Tensor& gamma_BHMC, const at::Tensor& decay_BHMCC,
                        const at::Tensor& states_BHMKV, double scale) {
  // What the chunk reads from earlier chunks: the chunk-start state, decayed up to each query.
  const at::Tensor inter_BHMCV = (q_BHMCK * gamma_BHMC.exp().unsqueeze(-1)).matmul(states_BHMKV);
  // What it reads from its own tokens: causal, decayed attention over the values written in this chunk.
  const at::Tensor scores_BHMCC = q_BHMCK.matmul(k_BHMCK.transpose(-1, -2)) * decay_BHMCC;
  return scaled_matmul(scores_BHMCC, v_new_BHMCV, scale, inter_BHMCV, scale);
}

at::Tensor scaled_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, const at::Tensor& base,
                         double beta) {
  TORCH_CHECK(a.dim() >= 2 && a.dim() == b.dim() &&
                  a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2),
              "scaled_matmul: a ", a.sizes(), " and b ", b.sizes(), " must share their leading dims");
  std::vector<int64_t> shape = a.sizes().vec();
  shape.back() = b.size(-1);
  const auto matrices = [](const at::Tensor& x) { return x.reshape({-1, x.size(-2), x.size(-1)}); };
  // With beta = 0 the GEMM ignores its input: a broadcast scalar stands in.
  const at::Tensor input = base.defined() ? matrices(base) : at::zeros({}, a.options());
  const double input_scale = base.defined() ? beta : 0.0;
  return at::baddbmm(input, matrices(a), matrices(b), input_scale, alpha).view(shape);
}

}  // namespace dla::ops::common
