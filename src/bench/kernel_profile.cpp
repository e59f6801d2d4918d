// Kernel profile of a benchmark through LibTorch's Kineto profiler.
#include "dla/bench/kernel_profile.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include "dla/util/error.h"

namespace dla::bench {

nlohmann::json profile_kernels(const std::function<void()>& fn, const std::filesystem::path& trace_path,
                               bool on_gpu, int64_t top) {
  namespace profiler = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  std::set<ActivityType> activities{ActivityType::CPU};
  if (torch::cuda::is_available()) activities.insert(ActivityType::CUDA);
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  fn();
  if (torch::cuda::is_available()) torch::cuda::synchronize();
  const std::unique_ptr<profiler::ProfilerResult> result = profiler::disableProfiler();
  if (trace_path.has_parent_path()) std::filesystem::create_directories(trace_path.parent_path());
  try {
    result->save(trace_path.string());
  } catch (const std::exception& error) {
    throw UserError("--profile: cannot write the trace to " + trace_path.string() + ": " + error.what());
  }

  struct Total {
    uint64_t ns = 0;
    int64_t calls = 0;
  };
  // GPU kernels for a benchmark on the GPU; else the CPU's ATen ops (their times include nested ops).
  const c10::DeviceType device = on_gpu ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  std::map<std::string, Total> by_kernel;
  for (const auto& event : result->events()) {
    if (event.deviceType() != device) continue;
    Total& total = by_kernel[event.name()];
    total.ns += event.durationNs();
    ++total.calls;
  }
  std::vector<std::pair<std::string, Total>> sorted(by_kernel.begin(), by_kernel.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  nlohmann::json kernels = nlohmann::json::array();
  for (int64_t i = 0; i < std::min<int64_t>(top, static_cast<int64_t>(sorted.size())); ++i) {
    kernels.push_back({{"kernel", sorted[i].first.substr(0, 160)},
                       {"ms", static_cast<double>(sorted[i].second.ns) / 1e6},
                       {"calls", sorted[i].second.calls}});
  }
  return kernels;
}

}  // namespace dla::bench
