// Suite runs and reports.
#include "dla/eval/runner.h"

#include <torch/version.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "dla/build_info.h"
#include "dla/io/atomic_file.h"
#include "dla/train/metrics.h"

namespace dla::eval {
namespace {

void write_text(const std::filesystem::path& file, const std::string& text) {
  io::write_file_atomic(file, std::as_bytes(std::span(text.data(), text.size())));
}

std::string format_value(double value) {
  return std::abs(value) >= 1000 ? fmt::format("{:.1f}", value) : fmt::format("{:.4f}", value);
}

// Accuracy by (length, depth) as coloured cells, red (0) to green (1), with the values written in.
void write_heatmap_svg(const std::filesystem::path& file, const nlohmann::json& grid,
                       const std::string& title) {
  const auto& lengths = grid.at("lengths");
  const auto& depths = grid.at("depths");
  const double cell_w = 64, cell_h = 30, left = 90, top = 50;
  const double width = left + cell_w * static_cast<double>(depths.size()) + 20;
  const double height = top + cell_h * static_cast<double>(lengths.size()) + 50;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" "
      "font-size=\"15\">{2}</text>\n",
      width, height, title);
  for (size_t l = 0; l < lengths.size(); ++l) {
    const double y = top + cell_h * static_cast<double>(l);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} tok</text>\n", left - 6,
                       y + cell_h / 2 + 4, lengths[l].get<int64_t>());
    for (size_t d = 0; d < depths.size(); ++d) {
      const double value = grid.at("accuracy")[l][d].get<double>();
      const double x = left + cell_w * static_cast<double>(d);
      svg += fmt::format(
          "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"rgb({},{},90)\" stroke=\"white\"/>\n"
          "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.2f}</text>\n",
          x, y, cell_w, cell_h, static_cast<int>(230 * (1 - value) + 20), static_cast<int>(200 * value + 30),
          x + cell_w / 2, y + cell_h / 2 + 4, value);
    }
  }
  const double bottom = top + cell_h * static_cast<double>(lengths.size());
  for (size_t d = 0; d < depths.size(); ++d) {
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0f}%</text>\n",
                       left + cell_w * (static_cast<double>(d) + 0.5), bottom + 18,
                       100 * depths[d].get<double>());
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">needle depth</text>\n</svg>\n",
                     left + cell_w * static_cast<double>(depths.size()) / 2, bottom + 38);
  write_text(file, svg);
}

// The suite exactly as run, so a result file says how every task was defined.
std::string read_suite_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

nlohmann::json task_json(const TaskResult& t) {
  nlohmann::json j = {{"name", t.name}, {"type", t.type},       {"version", t.version},
                      {"n", t.n},       {"metrics", t.metrics}, {"settings", t.settings}};
  if (!t.skipped.empty()) j["skipped"] = t.skipped;
  if (!t.grid.is_null()) j["grid"] = t.grid;
  return j;
}

}  // namespace

std::string file_label(const std::string& path) {
  std::string label;
  for (const char c : path) {
    const bool keep = std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    if (keep) {
      label.push_back(c);
    } else if (!label.empty() && label.back() != '-') {
      label.push_back('-');
    }
  }
  while (!label.empty() && label.back() == '-')
    label.pop_back();
  return label.empty() ? std::string("model") : label;
}

std::vector<TaskResult> run_suite(const SuiteSpec& suite, model::CausalLMImpl& model,
                                  const data::Tokenizer& tokenizer, int64_t vocab_size, at::Device device,
                                  const EvalOptions& options, Shard shard) {
  Scorer scorer(model, device, options.batch_size > 0 ? options.batch_size : suite.batch_size, shard);
  TaskContext context{
      scorer,     tokenizer,
      vocab_size, options.data_root.empty() ? std::filesystem::path(suite.data_root) : options.data_root,
      suite.seed, options.limit};
  std::vector<TaskResult> results;
  for (const auto& task : suite.tasks) {
    const auto start = std::chrono::steady_clock::now();
    results.push_back(run_task(task, context));
    const auto& r = results.back();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!r.skipped.empty()) {
      spdlog::warn("eval: {} skipped (optional): {}", task.name, r.skipped);
      continue;
    }
    std::string metrics;
    for (const auto& [name, value] : r.metrics)
      metrics += fmt::format("{}{} {}", metrics.empty() ? "" : ", ", name, format_value(value));
    spdlog::info("eval: {} ({}, n={}): {} [{:.1f}s]", task.name, task.type, r.n, metrics, seconds);
  }
  return results;
}

void write_report(const std::filesystem::path& out, const SuiteSpec& suite, const EvalOptions& options,
                  const std::vector<CheckpointResults>& results) {
  std::filesystem::create_directories(out);
  nlohmann::json all = {
      {"suite", suite.name},
      {"suite_file", suite.file.string()},
      {"suite_yaml", read_suite_text(suite.file)},
      {"seed", suite.seed},
      {"limit", options.limit},
      {"versions", {{"dla", DLA_VERSION}, {"commit", DLA_GIT_COMMIT}, {"libtorch", TORCH_VERSION}}},
      {"checkpoints", nlohmann::json::array()}};
  for (const auto& c : results) {
    nlohmann::json tasks = nlohmann::json::array();
    for (const auto& t : c.tasks)
      tasks.push_back(task_json(t));
    all["checkpoints"].push_back({{"checkpoint", c.checkpoint}, {"tasks", tasks}});
  }
  write_text(out / "results.json", all.dump(2) + "\n");

  // Markdown and CSV: one row per task and metric, one column per checkpoint.
  std::string md = fmt::format("# {}\n\n| task | metric | n |", suite.name);
  std::string rule = "| --- | --- | --- |";
  for (const auto& c : results) {
    md += fmt::format(" {} |", c.checkpoint);
    rule += " --- |";
  }
  md += "\n" + rule + "\n";
  std::string csv = "checkpoint,task,version,metric,value,n\n";
  if (!results.empty()) {
    for (size_t t = 0; t < results.front().tasks.size(); ++t) {
      const auto& first = results.front().tasks[t];
      if (!first.skipped.empty()) {
        md += fmt::format("| {} | skipped: {} | | {}\n", first.name, first.skipped,
                          std::string(results.size() > 1 ? results.size() - 1 : 0, '|'));
        continue;
      }
      for (const auto& [metric, value] : first.metrics) {
        md += fmt::format("| {} | {} | {} |", first.name, metric, first.n);
        for (const auto& c : results)
          md += fmt::format(" {} |", format_value(c.tasks[t].metrics.at(metric)));
        md += "\n";
      }
    }
    for (const auto& c : results)
      for (const auto& t : c.tasks)
        for (const auto& [metric, value] : t.metrics)
          csv += fmt::format("\"{}\",{},{},{},{},{}\n", c.checkpoint, t.name, t.version, metric, value, t.n);
  }
  write_text(out / "results.md", md);
  write_text(out / "results.csv", csv);

  for (const auto& c : results) {
    const std::string label =
        results.size() > 1 ? fmt::format("-{}", file_label(c.checkpoint)) : std::string();
    for (const auto& t : c.tasks) {
      if (!t.positions.sum.empty()) {
        std::vector<double> x, y;
        for (size_t p = 0; p < t.positions.sum.size(); ++p) {
          if (t.positions.count[p] == 0) continue;
          x.push_back(static_cast<double>(p));
          y.push_back(t.positions.sum[p] / t.positions.count[p]);
        }
        train::write_curve_svg(out / fmt::format("{}{}-loss-by-position.svg", t.name, label), x, y,
                               fmt::format("{}: loss by context position ({})", t.name, c.checkpoint),
                               "mean loss", "context position (tokens)");
      }
      if (!t.grid.is_null()) {
        write_heatmap_svg(out / fmt::format("{}{}-heatmap.svg", t.name, label), t.grid,
                          fmt::format("{}: accuracy by length and depth ({})", t.name, c.checkpoint));
      }
    }
  }
}

}  // namespace dla::eval
