// The fused op's per-chunk stages as CUDA kernels (chunk_stages.cu): when they apply, and the launches on
// tensors. The inputs are read in place in their [B, T, H, ·] layout wherever their strides allow it.
#include <cstdint>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "dla/ops/fused.h"
#include "dla/ops/kernel_buffers.h"
#include "dla/ops/tf32_scope.h"
#include "kernels.h"
#include "token_rows.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#endif

namespace dla::ops::fused {

bool chunk_stages_apply([[maybe_unused]] const at::Tensor& q, [[maybe_unused]] const at::Tensor& k,
                        [[maybe_unused]] const at::Tensor& v, [[maybe_unused]] at::ScalarType compute_dtype,
                        [[maybe_unused]] int64_t chunk_size) {
#if defined(DLA_WITH_CUDA)
  if (!q.is_cuda() || !tf32_allowed() || compute_dtype != at::kFloat) return false;
  const at::ScalarType type = q.scalar_type();
  if ((type != at::kFloat && type != at::kBFloat16) || k.scalar_type() != type || v.scalar_type() != type)
    return false;
  const c10::cuda::CUDAGuard device_guard(q.device());
  return kernels::supports_chunk_stages(dims_of(q, v.size(3), chunk_size));
#else
  return false;
#endif
}

PreparedChunks prepare_chunks([[maybe_unused]] const at::Tensor& k, [[maybe_unused]] const at::Tensor& v,
                              [[maybe_unused]] const at::Tensor& g, [[maybe_unused]] const at::Tensor& beta,
                              [[maybe_unused]] int64_t chunk_size,
                              [[maybe_unused]] const PrepareOptions& prepare_options) {
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(k.device());
  const int64_t B = k.size(0), T = k.size(1), H = k.size(2), K = k.size(3), V = v.size(3);
  const int64_t M = (T + chunk_size - 1) / chunk_size, C = chunk_size;
  at::Tensor k_kept, v_kept;
  const kernels::TokenRows k_rows = token_rows(k, k_kept);
  const kernels::TokenRows v_rows = token_rows(v, v_kept);
  const at::Tensor g_BTH = g.to(at::kFloat).contiguous();
  const at::Tensor beta_BTH = beta.defined() ? beta.to(at::kFloat).contiguous() : at::Tensor();
  const auto options = k.options().dtype(at::kFloat);
  const bool delta_rule = beta.defined();
  const at::Tensor& known_inverse = prepare_options.inverse;
  if (known_inverse.defined()) {
    TORCH_CHECK(
        delta_rule && !prepare_options.bf16_copies && known_inverse.device() == k.device() &&
            known_inverse.scalar_type() == at::kFloat && known_inverse.is_contiguous() &&
            known_inverse.sizes() == at::IntArrayRef({B, H, M, C, C}),
        "fused chunk_prepare: a known inverse must be a contiguous float32 [B, H, M, C, C] tensor of the "
        "delta rule on k's device, without bf16 copies; got ",
        known_inverse.sizes());
  }
  TORCH_CHECK(!(prepare_options.bf16_state_operands && prepare_options.bf16_copies),
              "fused chunk_prepare: bf16 state operands and bf16 copies exclude each other");
  const bool bf16_operands = prepare_options.bf16_state_operands;
  const auto operand_options = bf16_operands ? options.dtype(at::kBFloat16) : options;
  PreparedChunks p;
  p.gamma_BHMC = at::empty({B, H, M, C}, options);
  p.k_to_end_BHMCK = at::empty({B, H, M, C, K}, operand_options);
  p.chunk_decay_BHM = at::empty({B, H, M}, options);
  if (delta_rule) {
    p.w_BHMCK = at::empty({B, H, M, C, K}, operand_options);
    p.inverse_BHMCC = known_inverse.defined() ? known_inverse : at::empty({B, H, M, C, C}, options);
  }
  if (prepare_options.written_values) p.u_BHMCV = at::empty({B, H, M, C, V}, options);
  if (prepare_options.bf16_copies) {
    const auto copy_of = [](const at::Tensor& x) {
      return x.defined() ? at::empty_like(x, x.options().dtype(at::kBFloat16)) : x;
    };
    p.k_to_end_bf16_BHMCK = copy_of(p.k_to_end_BHMCK);
    p.w_bf16_BHMCK = copy_of(p.w_BHMCK);
    p.inverse_bf16_BHMCC = copy_of(p.inverse_BHMCC);
  }
  const auto data = [](at::Tensor& x) { return x.defined() ? x.data_ptr<float>() : nullptr; };
  const auto copy = [](at::Tensor& x) { return x.defined() ? x.data_ptr() : nullptr; };
  // The kernel writes bf16 operands where it writes bf16 copies, and no float32 ones.
  at::Tensor& k_to_end_bf16 = bf16_operands ? p.k_to_end_BHMCK : p.k_to_end_bf16_BHMCK;
  at::Tensor& w_bf16 = bf16_operands ? p.w_BHMCK : p.w_bf16_BHMCK;
  at::Tensor no_tensor;
  const char* error = kernels::chunk_prepare(
      k_rows, v_rows, g_BTH.data_ptr<float>(), data_or_null(beta_BTH), data(p.gamma_BHMC),
      data(bf16_operands ? no_tensor : p.k_to_end_BHMCK), data(p.chunk_decay_BHM),
      data(bf16_operands ? no_tensor : p.w_BHMCK), known_inverse.defined() ? nullptr : data(p.inverse_BHMCC),
      known_inverse.defined() ? known_inverse.data_ptr<float>() : nullptr, data(p.u_BHMCV),
      {copy(k_to_end_bf16), copy(w_bf16), copy(p.inverse_bf16_BHMCC)}, dims_of(k, V, chunk_size),
      current_cuda_stream(k));
  TORCH_CHECK(error == nullptr, "fused chunk_prepare: CUDA kernel failed: ", error);
  return p;
#else
  TORCH_CHECK(false, "fused chunk_prepare: dla was built without CUDA");
#endif
}

at::Tensor chunk_outputs([[maybe_unused]] const at::Tensor& q, [[maybe_unused]] const at::Tensor& k,
                         [[maybe_unused]] const at::Tensor& gamma_BHMC,
                         [[maybe_unused]] const at::Tensor& states_BHMKV,
                         [[maybe_unused]] const at::Tensor& v_new_BHMCV, [[maybe_unused]] double scale) {
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int64_t chunk_size = gamma_BHMC.size(-1);
  at::Tensor q_kept, k_kept;
  const kernels::TokenRows q_rows = token_rows(q, q_kept);
  const kernels::TokenRows k_rows = token_rows(k, k_kept);
  const at::Tensor gamma = kernel_buffer(gamma_BHMC.to(at::kFloat));
  // Of q's type: bf16 from the bf16 state pass, float32 from the others.
  const at::Tensor states = kernel_buffer(states_BHMKV.to(q.scalar_type()));
  const at::Tensor v_new = kernel_buffer(v_new_BHMCV.to(q.scalar_type()));
  at::Tensor out_BTHV = at::empty({q.size(0), q.size(1), q.size(2), v_new.size(-1)}, q.options());
  const char* error = kernels::chunk_output(q_rows, k_rows, gamma.data_ptr<float>(), states.data_ptr(),
                                            v_new.data_ptr(), scale, out_BTHV.data_ptr(),
                                            dims_of(q, v_new.size(-1), chunk_size), current_cuda_stream(q));
  TORCH_CHECK(error == nullptr, "fused chunk_output: CUDA kernel failed: ", error);
  return out_BTHV;
#else
  TORCH_CHECK(false, "fused chunk_output: dla was built without CUDA");
#endif
}

}  // namespace dla::ops::fused
