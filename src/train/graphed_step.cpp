#include "dla/train/graphed_step.h"

#include <stdexcept>
#include <string>

#include "dla/util/error.h"

#if defined(DLA_WITH_CUDA)
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace dla::train {

struct GraphedStep::State {
  Body body;
  Reset reset;
  int64_t eager_runs = 0;
  int64_t runs = 0;
#if defined(DLA_WITH_CUDA)
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor ids, labels;  ///< the graph's inputs: each run copies its batch here
  std::vector<at::Tensor> outputs;
#endif
};

bool cuda_graphs_available() {
#if defined(DLA_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

GraphedStep::GraphedStep(Body body, Reset reset, int64_t eager_runs) : state_(std::make_unique<State>()) {
  state_->body = std::move(body);
  state_->reset = std::move(reset);
  state_->eager_runs = eager_runs;
}

GraphedStep::~GraphedStep() = default;

bool GraphedStep::captured() const {
#if defined(DLA_WITH_CUDA)
  return state_->graph != nullptr;
#else
  return false;
#endif
}

#if defined(DLA_WITH_CUDA)
namespace {

/// Makes `waiting` wait for the work queued on `first` so far.
void order_after(const c10::cuda::CUDAStream& waiting, const c10::cuda::CUDAStream& first) {
  cudaEvent_t event = nullptr;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(event, first.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiting.stream(), event, 0));
  C10_CUDA_CHECK(cudaEventDestroy(event));
}

/// Captures body(ids, labels) into `graph` on a side stream (the default stream cannot be captured), ordered
/// after the work queued so far and before the work queued next.
std::vector<at::Tensor> capture(at::cuda::CUDAGraph& graph, const GraphedStep::Body& body,
                                const at::Tensor& ids, const at::Tensor& labels) {
  const c10::DeviceIndex device = ids.device().index();
  const c10::cuda::CUDAGuard device_guard(device);
  const c10::cuda::CUDAStream ambient = c10::cuda::getCurrentCUDAStream(device);
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
  // The graph allocates from a private pool that cannot take the blocks the eager steps left cached, so
  // they go back to the device first (a model near the memory limit would not fit twice).
  C10_CUDA_CHECK(cudaDeviceSynchronize());
  c10::cuda::CUDACachingAllocator::emptyCache();
  order_after(side, ambient);
  std::vector<at::Tensor> outputs;
  {
    const c10::cuda::CUDAStreamGuard stream_guard(side);
    // Relaxed: the kernels' launchers set function attributes and the autograd engine's worker thread
    // calls into the runtime while the stream captures, which the stricter modes refuse.
    graph.capture_begin({0, 0}, cudaStreamCaptureModeRelaxed);
    try {
      outputs = body(ids, labels);
    } catch (const std::exception& e) {
      try {
        graph.capture_end();
      } catch (const std::exception&) {
        // The capture is already broken; the error that broke it is the one to report.
      }
      throw UserError(
          std::string("train.cuda_graphs: the training step could not be captured as a CUDA graph (") +
          e.what() + "); run without train.cuda_graphs");
    }
    graph.capture_end();
  }
  order_after(ambient, side);
  return outputs;
}

}  // namespace
#endif

std::vector<at::Tensor> GraphedStep::run(const at::Tensor& ids, const at::Tensor& labels) {
  State& s = *state_;
#if defined(DLA_WITH_CUDA)
  if (s.graph == nullptr && s.runs < s.eager_runs) {
    ++s.runs;
    s.reset();
    return s.body(ids, labels);
  }
  if (s.graph == nullptr) {
    s.ids = ids.clone();
    s.labels = labels.clone();
    s.reset();
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    s.outputs = capture(*graph, s.body, s.ids, s.labels);
    s.graph = std::move(graph);
  } else {
    s.ids.copy_(ids, /*non_blocking=*/true);
    s.labels.copy_(labels, /*non_blocking=*/true);
  }
  s.graph->replay();
  ++s.runs;
  return s.outputs;
#else
  (void)ids;
  (void)labels;
  (void)s;
  throw UserError("train.cuda_graphs: this build of dla has no CUDA");
#endif
}

}  // namespace dla::train
