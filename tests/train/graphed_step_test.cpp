// GraphedStep: eager runs, then one capture and replays that follow new inputs; a build without CUDA refuses.
#include "dla/train/graphed_step.h"

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "catch.h"
#include "dla/util/error.h"

namespace dla::train {

TEST_CASE("GraphedStep runs eagerly, then replays its captured step on each run's inputs", "[train][cuda]") {
  if (!cuda_graphs_available() || !torch::cuda::is_available()) {
    GraphedStep step([](const at::Tensor& ids, const at::Tensor&) { return std::vector<at::Tensor>{ids}; },
                     [] {});
    if (!cuda_graphs_available()) CHECK_THROWS_AS(step.run(at::ones({1}), at::ones({1})), UserError);
    WARN("no CUDA device: CUDA graphs are not exercised on this machine");
    return;
  }
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  at::Tensor w = at::ones({4}, cuda.dtype(at::kFloat)).requires_grad_();
  int resets = 0;
  // loss = Σ w·ids + Σ labels, so the loss is 12·i and w's gradient is ids = i at run i.
  GraphedStep step(
      [&](const at::Tensor& ids, const at::Tensor& labels) {
        const at::Tensor loss = (w * ids.to(at::kFloat)).sum() + labels.to(at::kFloat).sum();
        loss.backward();
        return std::vector<at::Tensor>{loss.detach(), w.grad()};
      },
      [&] {
        ++resets;
        w.mutable_grad().reset();
      },
      /*eager_runs=*/2);
  for (int64_t i = 0; i < 6; ++i) {
    CAPTURE(i);
    const std::vector<at::Tensor> outputs =
        step.run(at::full({4}, i, cuda.dtype(at::kLong)), at::full({4}, 2 * i, cuda.dtype(at::kLong)));
    CHECK(step.captured() == (i >= 2));
    CHECK(outputs[0].item<float>() == static_cast<float>(12 * i));
    CHECK(at::equal(outputs[1].cpu(), at::full({4}, static_cast<float>(i))));
  }
  CHECK(resets == 3);  // before the two eager runs and the capture, never before a replay
}

}  // namespace dla::train
