// Input checks and dtype choice shared by the public entry points of the linear-attention ops.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim.
#include <vector>

#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "dla/ops/common.h"

namespace dla::ops::common {

namespace {

void check_floating_on_device(std::string_view op, std::string_view name, const at::Tensor& x,
                              const at::Tensor& q) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == q.device(), op, ": ", name, " must be on q's device ", q.device(), ", got ",
              x.device());
}

}  // namespace

void check_inputs(std::string_view op, const at::Tensor& q_BTHK, const at::Tensor& k_BTHK,
                  const at::Tensor& v_BTHV, const at::Tensor& g_BTH, const at::Tensor& initial_state_BHKV) {
  TORCH_CHECK(q_BTHK.defined() && k_BTHK.defined() && v_BTHV.defined(), op, ": q, k and v must be defined");
  TORCH_CHECK(q_BTHK.dim() == 4, op, ": q must be [B, T, H, K], got ", q_BTHK.sizes());
  TORCH_CHECK(q_BTHK.sizes() == k_BTHK.sizes(), op, ": q and k must have the same shape, got ",
              q_BTHK.sizes(), " and ", k_BTHK.sizes());
  TORCH_CHECK(q_BTHK.size(1) >= 1, op, ": the sequence must hold at least one token, got q of ",
              q_BTHK.sizes());
  TORCH_CHECK(v_BTHV.dim() == 4 && v_BTHV.sizes().slice(0, 3) == q_BTHK.sizes().slice(0, 3), op,
              ": v must be [B, T, H, V] with B, T, H of q, got v ", v_BTHV.sizes(), " and q ",
              q_BTHK.sizes());
  check_floating_on_device(op, "q", q_BTHK, q_BTHK);
  check_floating_on_device(op, "k", k_BTHK, q_BTHK);
  check_floating_on_device(op, "v", v_BTHV, q_BTHK);
  check_token_gate(op, "g", g_BTH, q_BTHK);
  if (!initial_state_BHKV.defined()) return;
  const std::vector<int64_t> state_shape = {q_BTHK.size(0), q_BTHK.size(2), q_BTHK.size(3), v_BTHV.size(3)};
  TORCH_CHECK(initial_state_BHKV.sizes() == at::IntArrayRef(state_shape), op,
              ": initial_state must be [B, H, K, V] = ", at::IntArrayRef(state_shape), ", got ",
              initial_state_BHKV.sizes());
  check_floating_on_device(op, "initial_state", initial_state_BHKV, q_BTHK);
}

void check_token_gate(std::string_view op, std::string_view name, const at::Tensor& gate_BTH,
                      const at::Tensor& q_BTHK) {
  TORCH_CHECK(gate_BTH.defined(), op, ": ", name, " must be defined");
  TORCH_CHECK(gate_BTH.dim() == 3 && gate_BTH.sizes() == q_BTHK.sizes().slice(0, 3), op, ": ", name,
              " must be [B, T, H] with B, T, H of q, got ", name, " ", gate_BTH.sizes(), " and q ",
              q_BTHK.sizes());
  check_floating_on_device(op, name, gate_BTH, q_BTHK);
}

at::ScalarType compute_dtype(std::initializer_list<at::Tensor> inputs) {
  at::ScalarType dtype = at::kFloat;
  for (const auto& x : inputs) {
    if (x.defined()) dtype = at::promote_types(dtype, x.scalar_type());
  }
  return dtype;
}

at::Tensor initial_state_or_zeros(const at::Tensor& initial_state_BHKV, const at::Tensor& k_BTHK,
                                  const at::Tensor& v_BTHV, at::ScalarType dtype) {
  if (initial_state_BHKV.defined()) return initial_state_BHKV.to(dtype);
  return at::zeros({k_BTHK.size(0), k_BTHK.size(2), k_BTHK.size(3), v_BTHV.size(3)},
                   k_BTHK.options().dtype(dtype));
}

}  // namespace dla::ops::common
