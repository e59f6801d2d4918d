// The learning-rate schedule: linear warm-up, then cosine, linear or constant decay to lr · min_lr_ratio.
#pragma once

#include <cstdint>

#include "dla/train/options.h"

namespace dla::train {

/// Learning rate for optimiser step `step` (1-based) of `total_steps`.
double lr_at(const OptimOptions& optim, int64_t step, int64_t total_steps);

}  // namespace dla::train
