// Kernel profile of a benchmark through LibTorch's Kineto profiler.
#include "dla/bench/kernel_profile.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include "dla/util/error.h"

namespace dla::bench {

namespace {

/// A range of one thread's timeline, in the trace's microseconds.
struct Range {
  double start, end;
  std::string name;
};

/// The ranges no other range of the list contains, in order; a thread's ranges nest, so these are disjoint.
std::vector<Range> outermost(std::vector<Range> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.start != b.start ? a.start < b.start : a.end > b.end;
  });
  std::vector<Range> out;
  for (Range& r : ranges) {
    if (out.empty() || r.start >= out.back().end) out.push_back(std::move(r));
  }
  return out;
}

/// The range of a disjoint, ordered list that holds time t, if any.
const Range* holding(const std::vector<Range>& ranges, double t) {
  auto after = std::upper_bound(ranges.begin(), ranges.end(), t,
                                [](double time, const Range& r) { return time < r.start; });
  if (after == ranges.begin()) return nullptr;
  const Range& r = *std::prev(after);
  return t <= r.end ? &r : nullptr;
}

/// Time and count under one name.
struct Total {
  double ms = 0;
  int64_t count = 0;
};

/// The `top` names by total time, as [{name_key: name cut to 160 characters, "ms", count_key}].
nlohmann::json top_totals(const std::map<std::string, Total>& totals, int64_t top, const char* name_key,
                          const char* count_key) {
  std::vector<std::pair<std::string, Total>> sorted(totals.begin(), totals.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  nlohmann::json out = nlohmann::json::array();
  for (int64_t i = 0; i < std::min<int64_t>(top, static_cast<int64_t>(sorted.size())); ++i) {
    out.push_back({{name_key, sorted[i].first.substr(0, 160)},
                   {"ms", sorted[i].second.ms},
                   {count_key, sorted[i].second.count}});
  }
  return out;
}

}  // namespace

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

  // GPU kernels for a benchmark on the GPU; else the CPU's ATen ops (their times include nested ops).
  const c10::DeviceType device = on_gpu ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  std::map<std::string, Total> by_kernel;
  for (const auto& event : result->events()) {
    if (event.deviceType() != device) continue;
    Total& total = by_kernel[event.name()];
    total.ms += static_cast<double>(event.durationNs()) / 1e6;
    ++total.count;
  }
  return top_totals(by_kernel, top, "kernel", "calls");
}

nlohmann::json kernel_time_by_op(const std::filesystem::path& trace_path, int64_t top) {
  std::ifstream in(trace_path);
  if (!in) throw UserError("--profile: cannot read the trace " + trace_path.string());
  const nlohmann::json trace = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (trace.is_discarded()) throw UserError("--profile: " + trace_path.string() + " is not a JSON trace");
  const nlohmann::json* events = &trace;
  if (trace.is_object()) {
    const auto it = trace.find("traceEvents");
    if (it == trace.end()) throw UserError("--profile: " + trace_path.string() + " has no traceEvents");
    events = &*it;
  }

  // Fields of another type read as -1, 0 or "": an odd event is left out rather than stopping the benchmark.
  const auto number = [](const nlohmann::json& e, const char* key) {
    const auto it = e.find(key);
    return it != e.end() && it->is_number() ? it->get<double>() : 0.0;
  };
  const auto integer = [](const nlohmann::json& e, const char* key) {
    const auto it = e.find(key);
    return it != e.end() && it->is_number_integer() ? it->get<int64_t>() : int64_t{-1};
  };
  const auto text = [](const nlohmann::json& e, const char* key) {
    const auto it = e.find(key);
    return it != e.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  const auto correlation = [&](const nlohmann::json& e) {
    const auto args = e.find("args");
    return args != e.end() && args->is_object() ? integer(*args, "correlation") : int64_t{-1};
  };

  // Host ranges by thread, the launches by correlation id, and the device's work.
  std::map<int64_t, std::vector<Range>> ops, dla_ops;
  std::map<int64_t, std::pair<int64_t, double>> launches;  // correlation → (thread, time)
  std::vector<const nlohmann::json*> device_work;
  for (const nlohmann::json& e : *events) {
    if (!e.is_object()) continue;
    const std::string category = text(e, "cat");
    if (category == "cpu_op" || category == "user_annotation") {
      const int64_t thread = integer(e, "tid");
      const double start = number(e, "ts");
      Range range{start, start + number(e, "dur"), text(e, "name")};
      if (range.name.starts_with("dla::")) dla_ops[thread].push_back(range);
      ops[thread].push_back(std::move(range));
    } else if (category == "cuda_runtime" || category == "cuda_driver") {
      if (const int64_t id = correlation(e); id >= 0) launches[id] = {integer(e, "tid"), number(e, "ts")};
    } else if (category == "kernel" || category == "gpu_memcpy" || category == "gpu_memset") {
      device_work.push_back(&e);
    }
  }
  for (auto* by_thread : {&ops, &dla_ops}) {
    for (auto& [thread, ranges] : *by_thread)
      ranges = outermost(std::move(ranges));
  }

  std::map<std::string, Total> by_op;
  for (const nlohmann::json* e : device_work) {
    std::string op = "(none)";
    if (const auto launch = launches.find(correlation(*e)); launch != launches.end()) {
      const auto [thread, time] = launch->second;
      const Range* r = holding(dla_ops[thread], time);
      if (r == nullptr) r = holding(ops[thread], time);
      if (r != nullptr) op = r->name;
    }
    Total& total = by_op[op];
    total.ms += number(*e, "dur") / 1e3;
    ++total.count;
  }
  return top_totals(by_op, top, "op", "kernels");
}

}  // namespace dla::bench
