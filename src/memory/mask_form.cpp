// Multi-state linear attention, quadratic (mask) form (spec/dla.md §2): Λ gathered from the level table, and
// the T×T masked products of both backbones. Written to be read; O(T²) time and memory, for tests only.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, L number of λ levels.
#include "dla/memory/mask_form.h"

#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

#include <ATen/ops/linalg_solve_triangular.h>
#include <ATen/ops/ones.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "dla/ops/common.h"

namespace dla::memory {

namespace {

void check_floating_on_device(std::string_view op, std::string_view name, const at::Tensor& x,
                              const at::Tensor& reference) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == reference.device(), op, ": ", name, " must be on the device of the other inputs ",
              reference.device(), ", got ", x.device());
}

void check_lam_weights(std::string_view op, const at::Tensor& lam_weights_BHTT, const at::Tensor& q_BTHK) {
  const std::vector<int64_t> shape_BHTT = {q_BTHK.size(0), q_BTHK.size(2), q_BTHK.size(1), q_BTHK.size(1)};
  TORCH_CHECK(lam_weights_BHTT.defined() && lam_weights_BHTT.sizes() == at::IntArrayRef(shape_BHTT), op,
              ": lam_weights must be [B, H, T, T] = ", at::IntArrayRef(shape_BHTT), " for q ", q_BTHK.sizes(),
              ", got ", lam_weights_BHTT.defined() ? lam_weights_BHTT.sizes() : at::IntArrayRef{});
  check_floating_on_device(op, "lam_weights", lam_weights_BHTT, q_BTHK);
}

/// D[t,s] = exp(G_t − G_s) for s ≤ t, else 0, with G the cumulative sum of the log decay over all tokens.
at::Tensor decay_BHTT(const at::Tensor& g_BTH, at::ScalarType dtype) {
  const at::Tensor G_BHT = g_BTH.to(dtype).transpose(1, 2).cumsum(-1);
  const int64_t num_tokens = G_BHT.size(-1);
  const at::Tensor above_TT =
      at::ones({num_tokens, num_tokens}, G_BHT.options().dtype(at::kBool)).triu(/*diagonal=*/1);
  // Mask before exp: above the diagonal G_t − G_s > 0 can overflow, and inf · 0 would be NaN (also in the
  // gradient).
  return (G_BHT.unsqueeze(-1) - G_BHT.unsqueeze(-2))
      .masked_fill(above_TT, -std::numeric_limits<double>::infinity())
      .exp();
}

/// [B,T,H,X] -> [B,H,T,X] in `dtype`.
at::Tensor heads_first(const at::Tensor& x_BTHX, at::ScalarType dtype) {
  return x_BTHX.to(dtype).transpose(1, 2);
}

}  // namespace

at::Tensor level_weights(const at::Tensor& level, const at::Tensor& lam_BTHL, const at::Tensor& conf_BHTT) {
  constexpr std::string_view op = "memory::level_weights";
  TORCH_CHECK(lam_BTHL.defined() && lam_BTHL.dim() == 4 && lam_BTHL.size(1) >= 1 && lam_BTHL.size(3) >= 1, op,
              ": lam must be [B, T, H, L] with T, L >= 1, got ",
              lam_BTHL.defined() ? lam_BTHL.sizes() : at::IntArrayRef{});
  check_floating_on_device(op, "lam", lam_BTHL, lam_BTHL);
  const int64_t num_levels = lam_BTHL.size(3);
  const std::vector<int64_t> shape_BHTT = {lam_BTHL.size(0), lam_BTHL.size(2), lam_BTHL.size(1),
                                           lam_BTHL.size(1)};
  const at::IntArrayRef sizes_BHTT(shape_BHTT);
  const at::IntArrayRef sizes_TT = sizes_BHTT.slice(2);

  TORCH_CHECK(level.defined() && (level.sizes() == sizes_BHTT || level.sizes() == sizes_TT), op,
              ": level must be [B, H, T, T] = ", sizes_BHTT, " or [T, T] = ", sizes_TT, " for lam ",
              lam_BTHL.sizes(), ", got ", level.defined() ? level.sizes() : at::IntArrayRef{});
  TORCH_CHECK(at::isIntegralType(level.scalar_type(), /*includeBool=*/false), op,
              ": level must be an integer tensor, got ", level.scalar_type());
  TORCH_CHECK(level.device() == lam_BTHL.device(), op, ": level must be on lam's device ", lam_BTHL.device(),
              ", got ", level.device());
  // gather would fail on a larger level with a message that names neither input (a device assert on CUDA).
  const int64_t max_level = level.max().item<int64_t>();
  TORCH_CHECK(max_level < num_levels, op, ": level holds ", max_level, " but lam ", lam_BTHL.sizes(),
              " has only L = ", num_levels, " levels");
  if (conf_BHTT.defined()) {
    TORCH_CHECK(conf_BHTT.sizes() == sizes_BHTT, op, ": conf must be [B, H, T, T] = ", sizes_BHTT, ", got ",
                conf_BHTT.sizes());
    check_floating_on_device(op, "conf", conf_BHTT, lam_BTHL);
  }
  const at::ScalarType dtype = ops::common::compute_dtype({lam_BTHL, conf_BHTT});

  const at::Tensor level_BHTT = level.to(at::kLong).expand(sizes_BHTT);
  // Entries above the diagonal (level −1) gather level 0 and are then zeroed, which also stops their
  // gradient.
  const at::Tensor lam_BHTT =
      heads_first(lam_BTHL, dtype).gather(/*dim=*/3, level_BHTT.clamp_min(0)).masked_fill(level_BHTT < 0, 0);
  return conf_BHTT.defined() ? lam_BHTT * conf_BHTT.to(dtype) : lam_BHTT;
}

at::Tensor ssd_mask_form(const at::Tensor& q_BTHK, const at::Tensor& k_BTHK, const at::Tensor& v_BTHV,
                         const at::Tensor& g_BTH, const at::Tensor& lam_weights_BHTT, double scale) {
  constexpr std::string_view op = "memory::ssd_mask_form";
  ops::common::check_inputs(op, q_BTHK, k_BTHK, v_BTHV, g_BTH, /*initial_state_BHKV=*/{});
  check_lam_weights(op, lam_weights_BHTT, q_BTHK);
  const at::ScalarType dtype = ops::common::compute_dtype({q_BTHK, k_BTHK, v_BTHV, g_BTH, lam_weights_BHTT});

  const at::Tensor q_BHTK = heads_first(q_BTHK, dtype);
  const at::Tensor k_BHTK = heads_first(k_BTHK, dtype);
  const at::Tensor mask_BHTT =
      q_BHTK.matmul(k_BHTK.transpose(-1, -2)) * decay_BHTT(g_BTH, dtype) * lam_weights_BHTT.to(dtype);
  const at::Tensor out_BHTV = scale * mask_BHTT.matmul(heads_first(v_BTHV, dtype));
  return out_BHTV.transpose(1, 2).to(q_BTHK.scalar_type());
}

at::Tensor gdn_mask_form(const at::Tensor& q_BTHK, const at::Tensor& k_BTHK, const at::Tensor& v_BTHV,
                         const at::Tensor& g_BTH, const at::Tensor& beta_BTH,
                         const at::Tensor& lam_weights_BHTT, double scale) {
  constexpr std::string_view op = "memory::gdn_mask_form";
  ops::common::check_inputs(op, q_BTHK, k_BTHK, v_BTHV, g_BTH, /*initial_state_BHKV=*/{});
  ops::common::check_token_gate(op, "beta", beta_BTH, q_BTHK);
  check_lam_weights(op, lam_weights_BHTT, q_BTHK);
  const at::ScalarType dtype =
      ops::common::compute_dtype({q_BTHK, k_BTHK, v_BTHV, g_BTH, beta_BTH, lam_weights_BHTT});

  const at::Tensor q_BHTK = heads_first(q_BTHK, dtype);
  const at::Tensor k_BHTK = heads_first(k_BTHK, dtype);
  const at::Tensor beta_BHT = beta_BTH.to(dtype).transpose(1, 2);
  const at::Tensor k_t_BHKT = k_BHTK.transpose(-1, -2);
  const at::Tensor qk_BHTT = q_BHTK.matmul(k_t_BHKT).tril();
  const at::Tensor beta_kk_BHTT = (beta_BHT.unsqueeze(-1) * k_BHTK.matmul(k_t_BHKT)).tril(/*diagonal=*/-1);
  // read = tril(QKᵀ) · (I + beta_kk)⁻¹ as a solve from the right; unitriangular supplies the I. D factors out
  // of the product because it is a diagonal similarity, D ⊙ X = E X E⁻¹ with E = diag(exp(G)).
  const at::Tensor read_BHTT = at::linalg_solve_triangular(beta_kk_BHTT, qk_BHTT, /*upper=*/false,
                                                           /*left=*/false, /*unitriangular=*/true);
  const at::Tensor mask_BHTT = read_BHTT * decay_BHTT(g_BTH, dtype) * lam_weights_BHTT.to(dtype);
  const at::Tensor beta_v_BHTV = beta_BHT.unsqueeze(-1) * heads_first(v_BTHV, dtype);
  return (scale * mask_BHTT.matmul(beta_v_BHTV)).transpose(1, 2).to(q_BTHK.scalar_type());
}

}  // namespace dla::memory
