// metrics.jsonl and the loss-curve SVG.
#include "dla/train/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "dla/io/atomic_file.h"
#include "dla/util/error.h"

namespace dla::train {

MetricsLog::MetricsLog(const std::filesystem::path& file) : file_(file), out_(file, std::ios::app) {
  if (!out_) throw UserError("cannot open the metrics file '" + file.string() + "' for writing");
}

void MetricsLog::append(const nlohmann::json& row) {
  out_ << row.dump() << '\n';
  out_.flush();
  if (!out_) throw UserError("cannot write the metrics file '" + file_.string() + "'");
}

void write_curve_svg(const std::filesystem::path& file, const std::vector<double>& steps,
                     const std::vector<double>& values, const std::string& title, const std::string& y_label,
                     const std::string& x_label) {
  constexpr double kWidth = 720, kHeight = 420, kLeft = 70, kRight = 20, kTop = 40, kBottom = 50;
  const bool log_y = !values.empty() && *std::min_element(values.begin(), values.end()) > 0;
  auto transform = [&](double v) { return log_y ? std::log10(v) : v; };
  double x_min = steps.empty() ? 0 : steps.front(), x_max = steps.empty() ? 1 : steps.back();
  double y_min = 0, y_max = 1;
  if (!values.empty()) {
    y_min = transform(*std::min_element(values.begin(), values.end()));
    y_max = transform(*std::max_element(values.begin(), values.end()));
  }
  if (x_max <= x_min) x_max = x_min + 1;
  if (y_max <= y_min) y_max = y_min + 1;
  auto px = [&](double x) { return kLeft + (x - x_min) / (x_max - x_min) * (kWidth - kLeft - kRight); };
  auto py = [&](double y) {
    return kTop + (1 - (transform(y) - y_min) / (y_max - y_min)) * (kHeight - kTop - kBottom);
  };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"15\">{3}</text>\n",
      kWidth, kHeight, kLeft, title);
  // Axes with five ticks each.
  svg += fmt::format("<path d=\"M{0} {1} V{2} H{3}\" stroke=\"black\" fill=\"none\"/>\n", kLeft, kTop,
                     kHeight - kBottom, kWidth - kRight);
  for (int i = 0; i <= 4; ++i) {
    const double x = x_min + (x_max - x_min) * i / 4.0;
    const double y_t = y_min + (y_max - y_min) * i / 4.0;
    const double y = log_y ? std::pow(10.0, y_t) : y_t;
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:.0f}</text>\n", px(x),
                       kHeight - kBottom + 18, x);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{:.3g}</text>\n", kLeft - 6,
                       py(y) + 4, y);
    svg +=
        fmt::format("<path d=\"M{:.1f} {:.1f} H{:.1f}\" stroke=\"#ddd\"/>\n", kLeft, py(y), kWidth - kRight);
  }
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n",
                     (kLeft + kWidth - kRight) / 2, kHeight - 12, x_label);
  svg += fmt::format(
      "<text x=\"16\" y=\"{:.1f}\" transform=\"rotate(-90 16 {:.1f})\" text-anchor=\"middle\">{}{}</text>\n",
      (kTop + kHeight - kBottom) / 2, (kTop + kHeight - kBottom) / 2, y_label, log_y ? " (log scale)" : "");
  std::string points;
  for (std::size_t i = 0; i < steps.size() && i < values.size(); ++i) {
    points += fmt::format("{:.1f},{:.1f} ", px(steps[i]), py(values[i]));
  }
  svg +=
      "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"" + points + "\"/>\n</svg>\n";
  io::write_file_atomic(file, std::as_bytes(std::span(svg.data(), svg.size())));
}

}  // namespace dla::train
