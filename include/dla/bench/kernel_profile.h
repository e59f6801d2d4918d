// Where a benchmark's GPU time goes: runs a function under LibTorch's Kineto profiler, saves the Chrome
// trace and sums the device kernels' time by name, and by the operation that launched them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

namespace dla::bench {

/// Runs `fn` once under the profiler (CPU and CUDA activity), writes the trace to `trace_path` (open it in
/// chrome://tracing or Perfetto) and returns the `top` kernels by total time: [{"kernel", "ms", "calls"}]
/// (for a benchmark on the CPU, `on_gpu` false: the CPU's ATen ops, whose times include the ops they call).
nlohmann::json profile_kernels(const std::function<void()>& fn, const std::filesystem::path& trace_path,
                               bool on_gpu, int64_t top = 25);

/// The GPU time of a saved Kineto trace by the operation that launched it: each kernel, copy or fill is
/// charged to the outermost `dla::` range around its launch on the launching thread (the layer or op it
/// belongs to), else to the outermost operation there (an autograd node, an ATen op), else to "(none)".
/// Returns the `top` operations by total time: [{"op", "ms", "kernels"}]; empty without GPU activity.
nlohmann::json kernel_time_by_op(const std::filesystem::path& trace_path, int64_t top = 25);

}  // namespace dla::bench
