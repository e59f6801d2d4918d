// Gated DeltaNet mixer: projections, short convolutions, gates, the gated delta rule, gated RMSNorm.
// Shapes: B batch, T tokens, D model dim, H q/k heads, HV value heads, K key head dim, V value head dim.
#include "dla/model/gdn.h"

#include <ATen/ATen.h>

#include "dla/model/projections.h"
#include "dla/ops/rms_norm.h"

namespace dla::model {

at::Tensor init_dt_bias(int64_t n, double dt_min, double dt_max, double dt_floor) {
  const at::Tensor dt =
      at::exp(at::rand({n}) * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min)).clamp_min(dt_floor);
  return dt + at::log(-at::expm1(-dt));  // softplus(dt_bias) = dt
}

GatedDeltaNetImpl::GatedDeltaNetImpl(int64_t hidden_size, const GdnOptions& options, double norm_eps,
                                     int64_t chunk_size, const memory::MemoryOptions& memory_options)
    : options_(options), chunk_size_(chunk_size) {
  const int64_t H = options.num_heads, HV = options.value_heads(), K = options.head_dim;
  const int64_t V = options.value_head_dim();
  TORCH_CHECK(static_cast<double>(V) == static_cast<double>(K) * options.expand_v,
              "GDN: head_dim · expand_v = ", static_cast<double>(K) * options.expand_v,
              " must be a whole number");
  TORCH_CHECK(HV % H == 0, "GDN: num_v_heads (HV=", HV, ") must be a multiple of num_heads (H=", H, ")");
  TORCH_CHECK(options.use_short_conv, "GDN: use_short_conv = false is not supported");
  auto linear = [&](const char* name, int64_t in, int64_t out) {
    return register_module(name, torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)));
  };
  auto conv = [&](const char* name, int64_t channels) {
    return register_module(name,
                           torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, channels, options.conv_size)
                                                 .groups(channels)
                                                 .padding(options.conv_size - 1)
                                                 .bias(false)));
  };
  A_log = register_parameter("A_log", at::empty({HV}));
  dt_bias = register_parameter("dt_bias", at::empty({HV}));
  q_proj = linear("q_proj", hidden_size, H * K);
  k_proj = linear("k_proj", hidden_size, H * K);
  v_proj = linear("v_proj", hidden_size, HV * V);
  a_proj = linear("a_proj", hidden_size, HV);
  b_proj = linear("b_proj", hidden_size, HV);
  q_conv1d = conv("q_conv1d", H * K);
  k_conv1d = conv("k_conv1d", H * K);
  v_conv1d = conv("v_conv1d", HV * V);
  if (options.use_gate) g_proj = linear("g_proj", hidden_size, HV * V);
  o_norm = register_module("o_norm", GatedRMSNorm(V, norm_eps, /*gate_before_norm=*/false));
  o_proj = linear("o_proj", HV * V, hidden_size);
  // The state is kept per value head.
  memory = register_module("memory", memory::make_memory_policy(memory_options, hidden_size, HV));
  reset_gate_parameters();
}

void GatedDeltaNetImpl::reset_gate_parameters() {
  at::NoGradGuard no_grad;
  A_log.copy_(at::log(at::empty_like(A_log).uniform_(0, 16)));
  dt_bias.copy_(init_dt_bias(dt_bias.size(0)));
}

at::Tensor GatedDeltaNetImpl::forward(const at::Tensor& x_BTD, MixerCache* cache) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  const int64_t H = options_.num_heads, HV = options_.value_heads(), K = options_.head_dim;
  const int64_t V = options_.value_head_dim();

  // L2 normalisation with eps inside the square root, as fla's l2norm.
  auto l2_normalise = [](const at::Tensor& t) {
    return ops::rms_norm(t, at::Tensor(), at::Tensor(), {.eps = 1e-6, .mean = false});
  };
  if (cache != nullptr) cache->conv_tails.resize(3);
  auto tail = [&](std::size_t i) { return cache != nullptr ? &cache->conv_tails[i] : nullptr; };
  std::vector<torch::nn::Linear> input_layers = {q_proj, k_proj, v_proj, a_proj, b_proj};
  if (options_.use_gate) input_layers.push_back(g_proj);
  const std::vector<at::Tensor> projected = project_together(x_BTD, input_layers);
  at::Tensor q_BTHK = l2_normalise(causal_conv_silu(projected[0], q_conv1d, tail(0)).view({B, T, H, K}));
  at::Tensor k_BTHK = l2_normalise(causal_conv_silu(projected[1], k_conv1d, tail(1)).view({B, T, H, K}));
  const at::Tensor v_BTHV = causal_conv_silu(projected[2], v_conv1d, tail(2)).view({B, T, HV, V});
  if (HV != H) {
    // Grouped value heads: value head i reads q/k head i / (HV/H).
    q_BTHK = q_BTHK.repeat_interleave(HV / H, /*dim=*/2);
    k_BTHK = k_BTHK.repeat_interleave(HV / H, /*dim=*/2);
  }
  at::Tensor beta_BTH = at::sigmoid(projected[4]);
  if (options_.allow_neg_eigval) beta_BTH = beta_BTH * 2;
  // Log decay in float32: g = −exp(A_log) · softplus(a + dt_bias) ≤ 0.
  const at::Tensor g_BTH =
      -at::exp(A_log.to(at::kFloat)) * at::softplus(projected[3].to(at::kFloat) + dt_bias.to(at::kFloat));

  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  const memory::Recurrence terms{q_BTHK, k_BTHK, v_BTHV, g_BTH, beta_BTH, scale};
  const at::Tensor o_BTHV =
      memory->forward(x_BTD, terms, chunk_size_, cache != nullptr ? &cache->memory : nullptr);

  const at::Tensor z_BTHV = options_.use_gate ? projected[5].view({B, T, HV, V}) : at::Tensor();
  const at::Tensor y_BTHV = o_norm->forward(o_BTHV, z_BTHV);
  return o_proj->forward(y_BTHV.reshape({B, T, HV * V}));
}

}  // namespace dla::model
