// The fused state pass: the CUDA kernels where they apply (with TF32 products while the caller allows TF32,
// bf16 products for bf16 operands), else the same recurrences as loops of LibTorch ops (the CPU path, and the
// reference the kernels are tested against).
// Shapes: B batch, H heads, M chunks, C chunk length, K key dim, V value dim.
#include <cstdint>
#include <initializer_list>
#include <vector>

#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#include "dla/ops/fused.h"
#include "dla/ops/kernel_buffers.h"
#include "dla/ops/tf32_scope.h"
#include "kernels.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#endif

namespace dla::ops::fused {
namespace {

#if defined(DLA_WITH_CUDA)
kernels::StatePassDims dims_of(const at::Tensor& k_to_end_BHMCK, const at::Tensor& u_BHMCV) {
  return {k_to_end_BHMCK.size(0) * k_to_end_BHMCK.size(1), k_to_end_BHMCK.size(2), k_to_end_BHMCK.size(3),
          k_to_end_BHMCK.size(4), u_BHMCV.size(4)};
}

/// Whether the bf16 kernels run: every operand that may be bf16 is (or is undefined), on a CUDA device, and
/// the kernels run the dims.
bool bf16_kernel_runs(std::initializer_list<const at::Tensor*> operands, const at::Tensor& k_to_end_BHMCK,
                      const at::Tensor& values_BHMCV) {
  for (const at::Tensor* x : operands) {
    if (x->defined() && (!x->is_cuda() || x->scalar_type() != at::kBFloat16)) return false;
  }
  const c10::cuda::CUDAGuard device_guard(k_to_end_BHMCK.device());
  return kernels::supports_bf16_state_pass(dims_of(k_to_end_BHMCK, values_BHMCV));
}

#endif

bool has_bf16(std::initializer_list<const at::Tensor*> operands) {
  for (const at::Tensor* x : operands) {
    if (x->defined() && x->scalar_type() == at::kBFloat16) return true;
  }
  return false;
}

at::Tensor to_float(const at::Tensor& x) {
  return x.defined() ? x.to(at::kFloat) : x;
}

StatePassForward forward_loop(const at::Tensor& k_to_end_BHMCK, const at::Tensor& u_BHMCV,
                              const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                              const at::Tensor& initial_state_BHKV) {
  const bool delta_rule = w_BHMCK.defined();
  std::vector<at::Tensor> states_BHKV;
  std::vector<at::Tensor> v_new_BHCV;
  at::Tensor state_BHKV = initial_state_BHKV;
  for (int64_t m = 0; m < u_BHMCV.size(2); ++m) {
    states_BHKV.push_back(state_BHKV);
    const at::Tensor u_BHCV = u_BHMCV.select(2, m);
    v_new_BHCV.push_back(delta_rule ? u_BHCV - w_BHMCK.select(2, m).matmul(state_BHKV) : u_BHCV);
    state_BHKV = chunk_decay_BHM.select(2, m).unsqueeze(-1).unsqueeze(-1) * state_BHKV +
                 k_to_end_BHMCK.select(2, m).transpose(-1, -2).matmul(v_new_BHCV.back());
  }
  return {at::stack(states_BHKV, 2), delta_rule ? at::stack(v_new_BHCV, 2) : u_BHMCV, state_BHKV};
}

StatePassBackward backward_loop(const at::Tensor& q_read_BHMCK, const at::Tensor& d_out_BHMCV,
                                const at::Tensor& d_v_new_intra_BHMCV, const at::Tensor& k_to_end_BHMCK,
                                const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                                const at::Tensor& d_final_state_BHKV) {
  const int64_t num_chunks = d_out_BHMCV.size(2);
  std::vector<at::Tensor> d_states_next_BHKV(num_chunks);
  std::vector<at::Tensor> d_v_new_BHCV(num_chunks);
  at::Tensor d_state_BHKV = d_final_state_BHKV;
  for (int64_t m = num_chunks - 1; m >= 0; --m) {
    d_states_next_BHKV[m] = d_state_BHKV;
    d_v_new_BHCV[m] = d_v_new_intra_BHMCV.select(2, m) + k_to_end_BHMCK.select(2, m).matmul(d_state_BHKV);
    at::Tensor d_start_BHKV = chunk_decay_BHM.select(2, m).unsqueeze(-1).unsqueeze(-1) * d_state_BHKV +
                              q_read_BHMCK.select(2, m).transpose(-1, -2).matmul(d_out_BHMCV.select(2, m));
    if (w_BHMCK.defined())
      d_start_BHKV = d_start_BHKV - w_BHMCK.select(2, m).transpose(-1, -2).matmul(d_v_new_BHCV[m]);
    d_state_BHKV = d_start_BHKV;
  }
  return {at::stack(d_states_next_BHKV, 2), at::stack(d_v_new_BHCV, 2), d_state_BHKV};
}

}  // namespace

bool state_pass_uses_cuda_kernel([[maybe_unused]] const at::Tensor& k_to_end_BHMCK,
                                 [[maybe_unused]] const at::Tensor& u_BHMCV) {
#if defined(DLA_WITH_CUDA)
  if (!k_to_end_BHMCK.is_cuda()) return false;
  if (k_to_end_BHMCK.scalar_type() == at::kBFloat16 &&
      bf16_kernel_runs({&k_to_end_BHMCK}, k_to_end_BHMCK, u_BHMCV))
    return true;
  const c10::cuda::CUDAGuard device_guard(k_to_end_BHMCK.device());
  return kernels::supports(dims_of(k_to_end_BHMCK, u_BHMCV));
#else
  return false;
#endif
}

bool bf16_state_pass_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             at::ScalarType compute_dtype, int64_t chunk_size) {
  if (q.scalar_type() != at::kBFloat16 || !chunk_stages_apply(q, k, v, compute_dtype, chunk_size))
    return false;
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int64_t chunks = (q.size(1) + chunk_size - 1) / chunk_size;
  return kernels::supports_bf16_state_pass({q.size(0) * q.size(2), chunks, chunk_size, q.size(3), v.size(3)});
#else
  return false;
#endif
}

StatePassForward state_pass_forward(const at::Tensor& k_to_end_BHMCK, const at::Tensor& u_BHMCV,
                                    const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                                    const at::Tensor& initial_state_BHKV) {
#if defined(DLA_WITH_CUDA)
  if (bf16_kernel_runs({&k_to_end_BHMCK, &w_BHMCK}, k_to_end_BHMCK, u_BHMCV)) {
    const c10::cuda::CUDAGuard device_guard(k_to_end_BHMCK.device());
    const at::Tensor k_to_end = kernel_buffer(k_to_end_BHMCK);
    const at::Tensor w = kernel_buffer(w_BHMCK);
    const at::Tensor u = kernel_buffer(u_BHMCV.to(at::kFloat));
    const at::Tensor chunk_decay = kernel_buffer(chunk_decay_BHM.to(at::kFloat));
    const at::Tensor initial_state = kernel_buffer(initial_state_BHKV.to(at::kFloat));
    const int64_t B = u.size(0), H = u.size(1), M = u.size(2), K = k_to_end.size(4), V = u.size(4);
    const auto bf16 = u.options().dtype(at::kBFloat16);
    StatePassForward result{at::empty({B, H, M, K, V}, bf16), at::empty_like(u, bf16),
                            at::empty({B, H, K, V}, u.options())};
    const char* error = kernels::state_pass_forward_bf16(
        k_to_end.data_ptr(), u.data_ptr<float>(), untyped_data_or_null(w), chunk_decay.data_ptr<float>(),
        initial_state.data_ptr<float>(), result.states_BHMKV.data_ptr(), result.v_new_BHMCV.data_ptr(),
        result.final_state_BHKV.data_ptr<float>(), dims_of(k_to_end, u), current_cuda_stream(u));
    TORCH_CHECK(error == nullptr, "fused state pass forward (bf16): CUDA kernel failed: ", error);
    return result;
  }
#endif
  // bf16 operands that the bf16 kernels do not run go on in float32.
  if (has_bf16({&k_to_end_BHMCK, &w_BHMCK})) {
    return state_pass_forward(to_float(k_to_end_BHMCK), to_float(u_BHMCV), to_float(w_BHMCK),
                              to_float(chunk_decay_BHM), to_float(initial_state_BHKV));
  }
  if (!state_pass_uses_cuda_kernel(k_to_end_BHMCK, u_BHMCV))
    return forward_loop(k_to_end_BHMCK, u_BHMCV, w_BHMCK, chunk_decay_BHM, initial_state_BHKV);
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(k_to_end_BHMCK.device());
  const at::Tensor k_to_end = kernel_buffer(k_to_end_BHMCK);
  const at::Tensor u = kernel_buffer(u_BHMCV);
  const at::Tensor w = kernel_buffer(w_BHMCK);
  const at::Tensor chunk_decay = kernel_buffer(chunk_decay_BHM);
  const at::Tensor initial_state = kernel_buffer(initial_state_BHKV);
  const int64_t B = u.size(0), H = u.size(1), M = u.size(2), K = k_to_end.size(4), V = u.size(4);
  StatePassForward result{at::empty({B, H, M, K, V}, u.options()), w.defined() ? at::empty_like(u) : u,
                          at::empty({B, H, K, V}, u.options())};
  const char* error = kernels::state_pass_forward(
      k_to_end.data_ptr<float>(), u.data_ptr<float>(), data_or_null(w), chunk_decay.data_ptr<float>(),
      initial_state.data_ptr<float>(), result.states_BHMKV.data_ptr<float>(),
      w.defined() ? result.v_new_BHMCV.data_ptr<float>() : nullptr, result.final_state_BHKV.data_ptr<float>(),
      dims_of(k_to_end, u), tf32_allowed(), current_cuda_stream(u));
  TORCH_CHECK(error == nullptr, "fused state pass forward: CUDA kernel failed: ", error);
  return result;
#else
  TORCH_CHECK(false, "fused state pass: dla was built without CUDA");
#endif
}

StatePassBackward state_pass_backward(const at::Tensor& q_read_BHMCK, const at::Tensor& d_out_BHMCV,
                                      const at::Tensor& d_v_new_intra_BHMCV, const at::Tensor& k_to_end_BHMCK,
                                      const at::Tensor& w_BHMCK, const at::Tensor& chunk_decay_BHM,
                                      const at::Tensor& d_final_state_BHKV) {
#if defined(DLA_WITH_CUDA)
  if (bf16_kernel_runs({&q_read_BHMCK, &d_out_BHMCV, &k_to_end_BHMCK, &w_BHMCK}, k_to_end_BHMCK,
                       d_out_BHMCV)) {
    const c10::cuda::CUDAGuard device_guard(k_to_end_BHMCK.device());
    const at::Tensor q_read = kernel_buffer(q_read_BHMCK);
    const at::Tensor d_out = kernel_buffer(d_out_BHMCV);
    const at::Tensor d_v_new_intra = kernel_buffer(d_v_new_intra_BHMCV.to(at::kFloat));
    const at::Tensor k_to_end = kernel_buffer(k_to_end_BHMCK);
    const at::Tensor w = kernel_buffer(w_BHMCK);
    const at::Tensor chunk_decay = kernel_buffer(chunk_decay_BHM.to(at::kFloat));
    const at::Tensor d_final_state = kernel_buffer(d_final_state_BHKV.to(at::kFloat));
    const int64_t B = d_out.size(0), H = d_out.size(1), M = d_out.size(2), K = k_to_end.size(4),
                  V = d_out.size(4);
    const auto bf16 = d_v_new_intra.options().dtype(at::kBFloat16);
    StatePassBackward result{at::empty({B, H, M, K, V}, bf16), at::empty_like(d_v_new_intra, bf16),
                             at::empty({B, H, K, V}, d_v_new_intra.options())};
    const char* error = kernels::state_pass_backward_bf16(
        q_read.data_ptr(), d_out.data_ptr(), d_v_new_intra.data_ptr<float>(), k_to_end.data_ptr(),
        untyped_data_or_null(w), chunk_decay.data_ptr<float>(), d_final_state.data_ptr<float>(),
        result.d_states_next_BHMKV.data_ptr(), result.d_v_new_BHMCV.data_ptr(),
        result.d_initial_state_BHKV.data_ptr<float>(), dims_of(k_to_end, d_out), current_cuda_stream(d_out));
    TORCH_CHECK(error == nullptr, "fused state pass backward (bf16): CUDA kernel failed: ", error);
    return result;
  }
#endif
  if (has_bf16({&q_read_BHMCK, &d_out_BHMCV, &k_to_end_BHMCK, &w_BHMCK})) {
    return state_pass_backward(to_float(q_read_BHMCK), to_float(d_out_BHMCV), to_float(d_v_new_intra_BHMCV),
                               to_float(k_to_end_BHMCK), to_float(w_BHMCK), to_float(chunk_decay_BHM),
                               to_float(d_final_state_BHKV));
  }
  if (!state_pass_uses_cuda_kernel(k_to_end_BHMCK, d_out_BHMCV)) {
    return backward_loop(q_read_BHMCK, d_out_BHMCV, d_v_new_intra_BHMCV, k_to_end_BHMCK, w_BHMCK,
                         chunk_decay_BHM, d_final_state_BHKV);
  }
#if defined(DLA_WITH_CUDA)
  const c10::cuda::CUDAGuard device_guard(k_to_end_BHMCK.device());
  const at::Tensor q_read = kernel_buffer(q_read_BHMCK);
  const at::Tensor d_out = kernel_buffer(d_out_BHMCV);
  const at::Tensor d_v_new_intra = kernel_buffer(d_v_new_intra_BHMCV);
  const at::Tensor k_to_end = kernel_buffer(k_to_end_BHMCK);
  const at::Tensor w = kernel_buffer(w_BHMCK);
  const at::Tensor chunk_decay = kernel_buffer(chunk_decay_BHM);
  const at::Tensor d_final_state = kernel_buffer(d_final_state_BHKV);
  const int64_t B = d_out.size(0), H = d_out.size(1), M = d_out.size(2), K = k_to_end.size(4),
                V = d_out.size(4);
  StatePassBackward result{at::empty({B, H, M, K, V}, d_out.options()), at::empty_like(d_out),
                           at::empty({B, H, K, V}, d_out.options())};
  const char* error = kernels::state_pass_backward(
      q_read.data_ptr<float>(), d_out.data_ptr<float>(), d_v_new_intra.data_ptr<float>(),
      k_to_end.data_ptr<float>(), data_or_null(w), chunk_decay.data_ptr<float>(),
      d_final_state.data_ptr<float>(), result.d_states_next_BHMKV.data_ptr<float>(),
      result.d_v_new_BHMCV.data_ptr<float>(), result.d_initial_state_BHKV.data_ptr<float>(),
      dims_of(k_to_end, d_out), tf32_allowed(), current_cuda_stream(d_out));
  TORCH_CHECK(error == nullptr, "fused state pass backward: CUDA kernel failed: ", error);
  return result;
#else
  TORCH_CHECK(false, "fused state pass: dla was built without CUDA");
#endif
}

}  // namespace dla::ops::fused
