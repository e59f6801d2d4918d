// The kernel time of a saved trace by launching operation, on a small hand-written trace in Kineto's Chrome
// format: nested dla:: ranges, autograd nodes, launches outside any range, other threads, odd events.
#include "dla/bench/kernel_profile.h"

#include <fmt/format.h>

#include <cmath>
#include <string>

#include "catch.h"
#include "dla/util/error.h"
#include "test_util.h"

namespace dla::test {
namespace {

std::string op_event(const std::string& name, int tid, double ts, double dur) {
  return fmt::format(R"({{"ph": "X", "cat": "cpu_op", "name": "{}", "tid": {}, "ts": {}, "dur": {}}})", name,
                     tid, ts, dur);
}

std::string launch_event(int tid, double ts, int correlation) {
  return fmt::format(
      R"({{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "tid": {}, "ts": {}, "dur": 1, )"
      R"("args": {{"correlation": {}}}}})",
      tid, ts, correlation);
}

std::string device_event(const std::string& category, double dur, int correlation) {
  return fmt::format(R"({{"ph": "X", "cat": "{}", "name": "k", "tid": "stream 7", "ts": 1000, "dur": {}, )"
                     R"("args": {{"correlation": {}}}}})",
                     category, dur, correlation);
}

double ms_of(const nlohmann::json& by_op, const std::string& op) {
  for (const auto& row : by_op) {
    if (row.at("op") == op) return row.at("ms").get<double>();
  }
  return -1;
}

bool near(double x, double expected) {
  return std::abs(x - expected) < 1e-9;
}

}  // namespace

TEST_CASE("kernel time is charged to the outermost dla range, else the outermost op, of its launch",
          "[bench]") {
  const TempDir dir;
  const std::string events[] = {
      op_event("dla::memory_chunkwise", 1, 0, 100),
      op_event("dla::slot_pass", 1, 10, 50),
      launch_event(1, 20, 1),
      launch_event(1, 70, 2),
      op_event("dla::elsewhere", 2, 15, 10),  // another thread's range around the first launch's time
      op_event("autograd::engine::evaluate_function: X", 1, 200, 100),
      op_event("dla::slot_pass_backward", 1, 210, 50),
      launch_event(1, 220, 3),
      launch_event(1, 280, 4),
      launch_event(1, 500, 5),  // outside every range
      device_event("kernel", 5, 1),
      device_event("kernel", 3, 2),
      device_event("gpu_memcpy", 7, 3),
      device_event("gpu_memset", 2, 4),
      device_event("kernel", 4, 5),
      R"({"ph": "X", "cat": "kernel", "name": "no launch", "ts": 0, "dur": 1})",
      R"({"ph": "X", "cat": "cpu_op", "name": 7, "tid": "main"})",  // odd fields: left out
  };
  std::string trace = R"({"traceEvents": [)";
  for (const std::string& e : events)
    trace += (trace.back() == '[' ? "" : ", ") + e;
  write_text(dir / "trace.json", trace + "]}");

  const nlohmann::json by_op = bench::kernel_time_by_op(dir / "trace.json");
  REQUIRE(by_op.size() == 4);
  CHECK(by_op[0].at("op") == "dla::memory_chunkwise");
  CHECK(by_op[0].at("kernels") == 2);
  CHECK(near(ms_of(by_op, "dla::memory_chunkwise"), 0.008));
  CHECK(near(ms_of(by_op, "dla::slot_pass_backward"), 0.007));
  CHECK(near(ms_of(by_op, "(none)"), 0.005));
  CHECK(near(ms_of(by_op, "autograd::engine::evaluate_function: X"), 0.002));
  CHECK(ms_of(by_op, "dla::elsewhere") < 0);
  CHECK(bench::kernel_time_by_op(dir / "trace.json", 2).size() == 2);
}

TEST_CASE("a trace that cannot be read is refused with its path", "[bench]") {
  const TempDir dir;
  CHECK_THROWS_WITH(bench::kernel_time_by_op(dir / "missing.json"), has_substr("missing.json"));
  write_text(dir / "bad.json", "{not json");
  CHECK_THROWS_WITH(bench::kernel_time_by_op(dir / "bad.json"), has_substr("bad.json is not a JSON trace"));
  write_text(dir / "empty.json", "{}");
  CHECK_THROWS_WITH(bench::kernel_time_by_op(dir / "empty.json"),
                    has_substr("empty.json has no traceEvents"));
}

}  // namespace dla::test
