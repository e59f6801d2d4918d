// Learning-rate schedule.
#include "dla/train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace dla::train {

double lr_at(const OptimOptions& optim, int64_t step, int64_t total_steps) {
  if (step <= optim.warmup_steps)
    return optim.lr * static_cast<double>(step) / static_cast<double>(optim.warmup_steps);
  const double min_lr = optim.lr * optim.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - optim.warmup_steps);
  const double progress =
      std::clamp(static_cast<double>(step - optim.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  switch (optim.schedule) {
    case LrSchedule::cosine:
      return min_lr + 0.5 * (optim.lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
    case LrSchedule::linear:
      return optim.lr - (optim.lr - min_lr) * progress;
    case LrSchedule::constant:
      break;
  }
  return optim.lr;
}

}  // namespace dla::train
