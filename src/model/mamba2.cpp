// Mamba-2 mixer: in_proj split, causal conv with SiLU, dt softplus, SSD, D skip, gated RMSNorm.
// Shapes: B batch, T tokens, D model dim, H heads, P head dim, G groups, N state size, I = H·P inner dim.
#include "dla/model/mamba2.h"

#include <ATen/ATen.h>

#include "dla/model/gdn.h"

namespace dla::model {

Mamba2Impl::Mamba2Impl(int64_t hidden_size, const Mamba2Options& options, double norm_eps, int64_t chunk_size,
                       const memory::MemoryOptions& memory_options)
    : options_(options), inner_dim_(options.expand * hidden_size), chunk_size_(chunk_size) {
  TORCH_CHECK(inner_dim_ % options.head_dim == 0, "Mamba-2: inner dim ", inner_dim_,
              " is not a multiple of head_dim ", options.head_dim);
  num_heads_ = inner_dim_ / options.head_dim;
  TORCH_CHECK(num_heads_ % options.num_groups == 0, "Mamba-2: heads (", num_heads_,
              ") must be a multiple of num_groups (", options.num_groups, ")");
  const int64_t GN = options.num_groups * options.state_size;
  const int64_t conv_dim = inner_dim_ + 2 * GN;
  dt_bias = register_parameter("dt_bias", at::empty({num_heads_}));
  A_log = register_parameter("A_log", at::empty({num_heads_}));
  D = register_parameter("D", at::ones({num_heads_}));
  conv1d = register_module("conv1d",
                           torch::nn::Conv1d(torch::nn::Conv1dOptions(conv_dim, conv_dim, options.conv_kernel)
                                                 .groups(conv_dim)
                                                 .padding(options.conv_kernel - 1)
                                                 .bias(options.use_conv_bias)));
  in_proj = register_module(
      "in_proj",
      torch::nn::Linear(
          torch::nn::LinearOptions(hidden_size, 2 * inner_dim_ + 2 * GN + num_heads_).bias(false)));
  norm = register_module("norm", GatedRMSNorm(inner_dim_, norm_eps, /*gate_before_norm=*/true,
                                              /*group_size=*/inner_dim_ / options.num_groups));
  out_proj = register_module(
      "out_proj", torch::nn::Linear(torch::nn::LinearOptions(inner_dim_, hidden_size).bias(false)));
  memory = register_module("memory", memory::make_memory_policy(memory_options, hidden_size, num_heads_));
  reset_gate_parameters();
}

void Mamba2Impl::reset_gate_parameters() {
  at::NoGradGuard no_grad;
  A_log.copy_(at::log(at::empty_like(A_log).uniform_(options_.a_init_min, options_.a_init_max)));
  dt_bias.copy_(init_dt_bias(num_heads_));
  D.fill_(1.0);
}

at::Tensor Mamba2Impl::forward(const at::Tensor& x_BTD, MixerCache* cache) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  const int64_t H = num_heads_, P = options_.head_dim, G = options_.num_groups, N = options_.state_size;
  const int64_t I = inner_dim_, GN = G * N;

  const at::Tensor zxbcdt = in_proj->forward(x_BTD);
  const auto parts = zxbcdt.split_with_sizes({I, I + 2 * GN, H}, /*dim=*/-1);
  const at::Tensor& z_BTI = parts[0];
  if (cache != nullptr) cache->conv_tails.resize(1);
  const at::Tensor xbc =
      causal_conv_silu(parts[1], conv1d, cache != nullptr ? &cache->conv_tails[0] : nullptr);
  const auto xbc_parts = xbc.split_with_sizes({I, GN, GN}, /*dim=*/-1);
  const at::Tensor x_BTHP = xbc_parts[0].reshape({B, T, H, P});
  // Head h reads group h / (H/G), as mamba_ssm's kernels map them. An expanded view, not a copy per head:
  // with one group the chunkwise op reads the shared B and C in place.
  const auto per_head = [&](const at::Tensor& x_BTGN) {
    return x_BTGN.reshape({B, T, G, 1, N}).expand({B, T, G, H / G, N}).reshape({B, T, H, N});
  };
  const at::Tensor b_BTHN = per_head(xbc_parts[1]);
  const at::Tensor c_BTHN = per_head(xbc_parts[2]);

  const at::Tensor dt_BTH = at::softplus(parts[2].to(at::kFloat) + dt_bias.to(at::kFloat));
  const at::Tensor g_BTH = -at::exp(A_log.to(at::kFloat)) * dt_BTH;
  const at::Tensor v_BTHP = x_BTHP * dt_BTH.unsqueeze(-1).to(x_BTHP.scalar_type());

  const memory::Recurrence terms{c_BTHN, b_BTHN, v_BTHP, g_BTH, at::Tensor(), /*scale=*/1.0};
  at::Tensor y_BTHP = memory->forward(x_BTD, terms, chunk_size_, cache != nullptr ? &cache->memory : nullptr);
  y_BTHP = y_BTHP + x_BTHP * D.view({1, 1, H, 1}).to(x_BTHP.scalar_type());
  const at::Tensor y_BTI = norm->forward(y_BTHP.reshape({B, T, I}), z_BTI);
  return out_proj->forward(y_BTI);
}

}  // namespace dla::model
