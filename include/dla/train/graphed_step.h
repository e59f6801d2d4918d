// A training step's forward and backward pass captured once as a CUDA graph and replayed at every later
// step (train.cuda_graphs): the host then launches one graph per step instead of every kernel of the model,
// its backward and the gradient clipping.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dla::train {

/// Whether this build of dla can capture CUDA graphs (it was built with CUDA).
bool cuda_graphs_available();

class GraphedStep {
 public:
  /// The work of one step on device token ids and labels of fixed shapes, returning device tensors (the
  /// loss, the gradient norm). It must not wait for the host: a graph cannot hold a copy to the host.
  using Body = std::function<std::vector<at::Tensor>(const at::Tensor& ids, const at::Tensor& labels)>;
  /// Drops what the body accumulates into (the gradients): called before every eager run and before the
  /// capture, never before a replay, whose gradients land in the graph's own buffers.
  using Reset = std::function<void()>;

  /// The first `eager_runs` runs are eager, so that lazy initialisation (cuBLAS workspaces, kernel
  /// attributes, autocast) happens before the capture.
  GraphedStep(Body body, Reset reset, int64_t eager_runs = 3);
  ~GraphedStep();
  GraphedStep(const GraphedStep&) = delete;
  GraphedStep& operator=(const GraphedStep&) = delete;

  /// One step on these inputs: eager at first, then captured (the capture's own run is a replay) and
  /// replayed. The returned tensors are overwritten by the next run; read them before.
  std::vector<at::Tensor> run(const at::Tensor& ids, const at::Tensor& labels);
  /// Whether the step has been captured, so that runs are replays.
  bool captured() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace dla::train
