// lr_at: linear warm-up from 0 to lr, then cosine, linear or constant decay to lr · min_lr_ratio.
#include "dla/train/lr_schedule.h"

#include <cmath>

#include "catch.h"

namespace dla::train {

TEST_CASE("lr_at warms up linearly, peaks at warmup_steps and ends at lr · min_lr_ratio", "[train]") {
  OptimOptions optim;
  optim.lr = 3e-3;
  optim.min_lr_ratio = 0.1;
  optim.warmup_steps = 10;
  const int64_t total = 100;
  const auto close = [](double a, double b) { return std::abs(a - b) <= 1e-12 * std::max(1.0, std::abs(b)); };

  for (const LrSchedule schedule : {LrSchedule::cosine, LrSchedule::linear, LrSchedule::constant}) {
    CAPTURE(config::enum_name(schedule));
    optim.schedule = schedule;
    CHECK(close(lr_at(optim, 0, total), 0.0));
    for (int64_t step = 1; step <= optim.warmup_steps; ++step) {
      CAPTURE(step);
      CHECK(close(lr_at(optim, step, total), optim.lr * static_cast<double>(step) / 10.0));
    }
    CHECK(close(lr_at(optim, optim.warmup_steps, total), optim.lr));
    const double end = schedule == LrSchedule::constant ? optim.lr : optim.lr * optim.min_lr_ratio;
    CHECK(close(lr_at(optim, total, total), end));
    CHECK(close(lr_at(optim, total + 50, total), end));  // past the end it stays there
    double previous = lr_at(optim, optim.warmup_steps, total);
    for (int64_t step = optim.warmup_steps + 1; step <= total; ++step) {
      CAPTURE(step);
      const double lr = lr_at(optim, step, total);
      CHECK(lr <= previous);
      CHECK(lr >= end - 1e-15);
      if (schedule == LrSchedule::constant) CHECK(lr == optim.lr);
      previous = lr;
    }
  }

  // Halfway through the decay: cosine and linear both sit at the midpoint of lr and the floor.
  const double middle = optim.lr * (1 + optim.min_lr_ratio) / 2;
  optim.schedule = LrSchedule::cosine;
  CHECK(close(lr_at(optim, 55, total), middle));
  optim.schedule = LrSchedule::linear;
  CHECK(close(lr_at(optim, 55, total), middle));
  CHECK(close(lr_at(optim, 32, total), optim.lr - (optim.lr - optim.lr * 0.1) * 22.0 / 90.0));
}

TEST_CASE("lr_at without warm-up decays from the first step", "[train]") {
  OptimOptions optim;
  optim.lr = 1e-3;
  optim.warmup_steps = 0;
  optim.schedule = LrSchedule::linear;
  optim.min_lr_ratio = 0.0;
  CHECK(std::abs(lr_at(optim, 1, 11) - 1e-3 * (1 - 1 / 11.0)) <= 1e-15);
  CHECK(lr_at(optim, 11, 11) == 0.0);
  CHECK(std::isfinite(lr_at(optim, 1, 1)));
}

}  // namespace dla::train
