// The `dla` policy (spec §3): boundary scores u_t = ½(1 − cos(W_a x_t, W_b x_{t−1})) per head, candidates
// u_t ≥ τ, a cache of at most `capacity` segments merged by the lowest score (or FIFO), straight-through
// confidences that carry the gradient to W_a and W_b, and the optional ratio loss. Decoding memory is
// constant in size. Shapes: B batch, T tokens, D model dim, H heads, R score dim.
#pragma once

#include "dla/memory/multi_state_policy.h"

namespace dla::memory {

class DlaPolicyImpl : public MultiStatePolicyImpl {
 public:
  DlaPolicyImpl(const MemoryOptions& options, int64_t hidden_size, int64_t num_heads);

  /// Boundary scores u_BTH (float32) of the tokens x_BTD. previous_key_BHR is W_b x of the token before the
  /// first (undefined when the first token is token 0, whose score is 1); first_position the first token's
  /// index (for `stride:K`).
  at::Tensor scores(const at::Tensor& x_BTD, const at::Tensor& previous_key_BHR, int64_t first_position);
  /// The ratio loss (H-Net) of scores u_BTH, unweighted: with F the fraction of candidates among tokens ≥ 1,
  /// G their mean score and N = 1 / target_rate, N/(N−1) · ((N−1)·F·G + (1−F)·(1−G)). Its minimum over F = G
  /// is at the target rate.
  at::Tensor ratio_loss(const at::Tensor& u_BTH) const;
  at::Tensor auxiliary_loss() const override { return auxiliary_loss_; }

  torch::nn::Linear score_a_proj{nullptr};  ///< W_a: D -> H·R, no bias
  torch::nn::Linear score_b_proj{nullptr};  ///< W_b: D -> H·R, no bias

 protected:
  Segmentation segment(const at::Tensor& x_BTD, MultiStateMemory* memory) override;
  std::unique_ptr<MultiStateMemory> new_memory() const override;

 private:
  MemoryOptions options_;
  int64_t stride_;  ///< K of boundary = stride:K, 0 for learned scores
  at::Tensor auxiliary_loss_;
};

}  // namespace dla::memory
