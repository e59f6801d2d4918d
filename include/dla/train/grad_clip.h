// Gradient clipping by the global norm, kept on the device so that the training step never waits for the
// host between the backward pass and the optimizer.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

namespace dla::train {

/// The L2 norm of all parameters' gradients together (a 0-dim float32 tensor on their device; 0 without
/// gradients) and, when max_norm > 0, every gradient scaled by min(1, max_norm / (norm + 1e-6)), as torch's
/// clip_grad_norm_ does. Parameters without a gradient are skipped. Nothing is read back to the host.
at::Tensor clip_grad_norm(const std::vector<at::Tensor>& parameters, double max_norm);

}  // namespace dla::train
