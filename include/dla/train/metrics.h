// What a training run leaves for people to look at: metrics.jsonl (one JSON object per logged step) and a
// loss-curve picture (SVG).
#pragma once

#include <filesystem>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

namespace dla::train {

/// Appends one JSON object per line to a file (kept across resumes) and remembers the loss curve.
class MetricsLog {
 public:
  explicit MetricsLog(const std::filesystem::path& file);
  void append(const nlohmann::json& row);

 private:
  std::filesystem::path file_;
  std::ofstream out_;
};

/// Writes an SVG line plot of `values` against `steps` (log-scale y when all values are positive).
void write_curve_svg(const std::filesystem::path& file, const std::vector<double>& steps,
                     const std::vector<double>& values, const std::string& title, const std::string& y_label,
                     const std::string& x_label = "step");

}  // namespace dla::train
