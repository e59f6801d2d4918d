// The fused op's backward per-chunk stages as CUDA kernels (chunk_gradients.cu): when they apply, and the
// launches on tensors. The inputs and the output gradient are read in place wherever their strides allow it.
#include <cstdint>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "dla/ops/fused.h"
#include "dla/ops/kernel_buffers.h"
#include "kernels.h"
#include "token_rows.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#endif

namespace dla::ops::fused {

bool chunk_gradients_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           at::ScalarType compute_dtype, int64_t chunk_size) {
  if (!chunk_stages_apply(q, k, v, compute_dtype, chunk_size)) return false;
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(q.device());
  return kernels::supports_chunk_gradients(dims_of(q, v.size(3), chunk_size));
#else
  return false;
#endif
}

ValueGradient chunk_value_gradient([[maybe_unused]] const at::Tensor& q, [[maybe_unused]] const at::Tensor& k,
                                   [[maybe_unused]] const at::Tensor& d_out_BTHV,
                                   [[maybe_unused]] const at::Tensor& gamma_BHMC,
                                   [[maybe_unused]] double scale) {
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int64_t B = q.size(0), H = q.size(2), K = q.size(3), V = d_out_BTHV.size(3);
  const int64_t M = gamma_BHMC.size(2), C = gamma_BHMC.size(3);
  at::Tensor q_kept, k_kept, d_out_kept;
  const kernels::TokenRows q_rows = token_rows(q, q_kept);
  const kernels::TokenRows k_rows = token_rows(k, k_kept);
  const kernels::TokenRows d_out_rows = token_rows(d_out_BTHV.to(q.scalar_type()), d_out_kept);
  const at::Tensor gamma = kernel_buffer(gamma_BHMC.to(at::kFloat));
  const auto options = q.options().dtype(at::kFloat);
  ValueGradient result{at::empty({B, H, M, C, K}, q.options()), at::empty({B, H, M, C, V}, q.options()),
                       at::empty({B, H, M, C, V}, options)};
  const char* error = kernels::chunk_value_gradient(
      q_rows, k_rows, d_out_rows, gamma.data_ptr<float>(), scale, result.q_read_BHMCK.data_ptr(),
      result.d_out_BHMCV.data_ptr(), result.d_v_new_intra_BHMCV.data_ptr<float>(), dims_of(q, V, C),
      current_cuda_stream(q));
  TORCH_CHECK(error == nullptr, "fused chunk_value_gradient: CUDA kernel failed: ", error);
  return result;
#else
  TORCH_CHECK(false, "fused chunk_value_gradient: dla was built without CUDA");
#endif
}

ChunkGradients chunk_gradients(
    [[maybe_unused]] const at::Tensor& q, [[maybe_unused]] const at::Tensor& k,
    [[maybe_unused]] const at::Tensor& v, [[maybe_unused]] const at::Tensor& beta,
    [[maybe_unused]] const at::Tensor& gamma_BHMC, [[maybe_unused]] const at::Tensor& inverse_BHMCC,
    [[maybe_unused]] const at::Tensor& states_BHMKV, [[maybe_unused]] const at::Tensor& v_new_BHMCV,
    [[maybe_unused]] const at::Tensor& d_out_BHMCV, [[maybe_unused]] const at::Tensor& d_states_next_BHMKV,
    [[maybe_unused]] const at::Tensor& d_v_new_BHMCV, [[maybe_unused]] double scale) {
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  const int64_t C = gamma_BHMC.size(3);
  at::Tensor q_kept, k_kept, v_kept;
  const auto buffer = [](const at::Tensor& x) { return kernel_buffer(x.defined() ? x.to(at::kFloat) : x); };
  const at::Tensor beta_BTH = buffer(beta), gamma = buffer(gamma_BHMC), inverse = buffer(inverse_BHMCC);
  // The kernel reads these of q's type (bf16 from the bf16 state pass, float32 from the others).
  const auto operand = [&](const at::Tensor& x) { return kernel_buffer(x.to(q.scalar_type())); };
  const at::Tensor states = operand(states_BHMKV), v_new = operand(v_new_BHMCV), d_out = operand(d_out_BHMCV);
  const at::Tensor d_states_next = operand(d_states_next_BHMKV), d_v_new = operand(d_v_new_BHMCV);
  const auto float_options = q.options().dtype(at::kFloat);
  ChunkGradients result{at::empty({B, T, H, K}, q.options()), at::empty({B, T, H, K}, q.options()),
                        at::empty({B, T, H, V}, q.options()), at::empty({B, T, H}, float_options),
                        beta.defined() ? at::empty({B, T, H}, float_options) : at::Tensor()};
  const kernels::ChunkGradientBuffers buffers{
      .q = token_rows(q, q_kept),
      .k = token_rows(k, k_kept),
      .v = token_rows(v, v_kept),
      .beta = data_or_null(beta_BTH),
      .gamma = gamma.data_ptr<float>(),
      .inverse = data_or_null(inverse),
      .states = states.data_ptr(),
      .v_new = v_new.data_ptr(),
      .d_out = d_out.data_ptr(),
      .d_states_next = d_states_next.data_ptr(),
      .d_v_new = d_v_new.data_ptr(),
      .d_q = result.d_q.data_ptr(),
      .d_k = result.d_k.data_ptr(),
      .d_v = result.d_v.data_ptr(),
      .d_g = result.d_g.data_ptr<float>(),
      .d_beta = result.d_beta.defined() ? result.d_beta.data_ptr<float>() : nullptr,
  };
  const char* error = kernels::chunk_gradients(buffers, scale, dims_of(q, V, C), current_cuda_stream(q));
  TORCH_CHECK(error == nullptr, "fused chunk_gradients: CUDA kernel failed: ", error);
  return result;
#else
  TORCH_CHECK(false, "fused chunk_gradients: dla was built without CUDA");
#endif
}

}  // namespace dla::ops::fused
