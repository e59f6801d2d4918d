// The DLA policy: boundary scores, the boundary cache and its confidences, the ratio loss.
// Shapes: B batch, T tokens, D model dim, H heads, R score dim, Q queries, S slots.
#include "dla/memory/dla_policy.h"

#include <optional>

#include <ATen/ATen.h>

namespace dla::memory {
namespace {

/// The decoding memory of DLA: the slot states, the alive boundaries, and W_b x of the last token.
struct DlaMemory : MultiStateMemory {
  std::optional<BoundaryCache> boundaries;
  at::Tensor last_key_BHR;
  int64_t size_bytes() const override {
    return MultiStateMemory::size_bytes() + (boundaries ? boundaries->size_bytes() : 0) +
           (last_key_BHR.defined() ? last_key_BHR.numel() * static_cast<int64_t>(last_key_BHR.element_size())
                                   : 0);
  }
};

}  // namespace

DlaPolicyImpl::DlaPolicyImpl(const MemoryOptions& options, int64_t hidden_size, int64_t num_heads)
    : MultiStatePolicyImpl(hidden_size, num_heads, options.num_levels()),
      options_(options),
      stride_(options.boundary_stride()) {
  const auto projection = torch::nn::LinearOptions(hidden_size, num_heads * options.score_dim).bias(false);
  score_a_proj = register_module("score_a_proj", torch::nn::Linear(projection));
  score_b_proj = register_module("score_b_proj", torch::nn::Linear(projection));
}

std::unique_ptr<MultiStateMemory> DlaPolicyImpl::new_memory() const {
  return std::make_unique<DlaMemory>();
}

at::Tensor DlaPolicyImpl::scores(const at::Tensor& x_BTD, const at::Tensor& previous_key_BHR,
                                 int64_t first_position) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1), H = num_heads_, R = options_.score_dim;
  if (stride_ > 0) {
    const at::Tensor t_T = at::arange(first_position, first_position + T, x_BTD.options().dtype(at::kLong));
    const at::Tensor u_T = ((t_T % stride_ == 0) & (t_T > 0)).to(at::kFloat);
    return u_T.view({1, T, 1}).expand({B, T, H}).contiguous();
  }
  const at::Tensor a_BTHR = score_a_proj->forward(x_BTD).to(at::kFloat).view({B, T, H, R});
  const at::Tensor b_BTHR = score_b_proj->forward(x_BTD).to(at::kFloat).view({B, T, H, R});
  const at::Tensor first_key_B1HR =
      previous_key_BHR.defined() ? previous_key_BHR.unsqueeze(1) : at::zeros({B, 1, H, R}, a_BTHR.options());
  const at::Tensor previous_BTHR = at::cat({first_key_B1HR, b_BTHR.narrow(1, 0, T - 1)}, /*dim=*/1);
  const at::Tensor cos_BTH =
      (a_BTHR * previous_BTHR).sum(-1) / (a_BTHR.norm(2, -1) * previous_BTHR.norm(2, -1)).clamp_min(1e-8);
  at::Tensor u_BTH = 0.5 * (1 - cos_BTH);
  if (first_position == 0) {
    // Token 0 has no predecessor: its score is stored as 1 and never used (it is never a candidate).
    const at::Tensor is_first_T11 = (at::arange(T, x_BTD.options().dtype(at::kLong)) == 0).view({1, T, 1});
    u_BTH = u_BTH.masked_fill(is_first_T11, 1);
  }
  return u_BTH;
}

at::Tensor DlaPolicyImpl::ratio_loss(const at::Tensor& u_BTH) const {
  const at::Tensor u = u_BTH.narrow(1, 1, u_BTH.size(1) - 1);
  const at::Tensor selected = (u >= static_cast<float>(options_.threshold)).to(u.scalar_type()).mean();
  const at::Tensor mean_score = u.mean();
  const double n = 1.0 / options_.target_rate;
  return n / (n - 1) * ((n - 1) * selected * mean_score + (1 - selected) * (1 - mean_score));
}

MultiStatePolicyImpl::Segmentation DlaPolicyImpl::segment(const at::Tensor& x_BTD, MultiStateMemory* memory) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
  auto* dla_memory = dynamic_cast<DlaMemory*>(memory);
  const int64_t first = dla_memory != nullptr ? dla_memory->position : 0;
  const at::Tensor u_BTH =
      scores(x_BTD, dla_memory != nullptr ? dla_memory->last_key_BHR : at::Tensor(), first);

  auxiliary_loss_ = at::Tensor();
  if (is_training() && options_.rate_loss > 0 && stride_ == 0 && T > 1)
    auxiliary_loss_ = options_.rate_loss * ratio_loss(u_BTH);

  const BoundaryOptions boundary{
      .capacity = options_.capacity, .threshold = options_.threshold, .merge = options_.merge};
  if (dla_memory == nullptr) {
    const SegmentTable segments = dla_segments(u_BTH.detach(), boundary);
    return {segments, stride_ > 0 ? at::Tensor() : straight_through_confidence(segments, u_BTH)};
  }
  if (!dla_memory->boundaries) dla_memory->boundaries.emplace(B, num_heads_, boundary);
  if (stride_ == 0) {
    const at::Tensor keys_BTHR = score_b_proj->forward(x_BTD.narrow(1, T - 1, 1)).to(at::kFloat);
    dla_memory->last_key_BHR = keys_BTHR.view({B, num_heads_, options_.score_dim}).detach();
  }
  return {dla_segments(u_BTH.detach(), *dla_memory->boundaries), at::Tensor()};
}

}  // namespace dla::memory
