// `dla bench suite`: reading a suite file, running its measurements, and the Markdown summary.
#include "dla/bench/suite.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <span>

#include "dla/build_info.h"
#include "dla/config/run_config.h"
#include "dla/io/atomic_file.h"
#include "dla/ops/kernels.h"
#include "dla/util/error.h"
#include "dla/util/yaml_map.h"

namespace dla::bench {
namespace {

const std::set<std::string> kMixers = {"gdn", "mamba2", "sdpa"};
const std::set<std::string> kMemories = {"single", "fenwick", "dla"};
const std::set<std::string> kDtypes = {"float32", "bfloat16"};
const std::set<std::string> kDevices = {"auto", "cpu", "cuda"};

void expect_one_of(const std::set<std::string>& allowed, const std::string& value, const std::string& where,
                   const std::string& key) {
  if (allowed.count(value) == 0)
    throw UserError(fmt::format("{}: {} '{}' is not one of {}", where, key, value, fmt::join(allowed, ", ")));
}

void expect_positive(int64_t value, const std::string& where, const std::string& key) {
  if (value < 1) throw UserError(fmt::format("{}: {} must be at least 1, got {}", where, key, value));
}

/// Reads the layer options a map sets into `o`, which keeps its values for the keys the map leaves out.
void read_layer_options(util::KeyReader& r, LayerBenchOptions& o) {
  r.read("mixer", o.mixer);
  r.read("memory", o.memory);
  r.read("capacity", o.capacity);
  r.read("max_length", o.max_length);
  r.read("heads", o.heads);
  r.read("head_dim", o.head_dim);
  r.read("dtype", o.dtype);
  r.read("device", o.device);
  r.read("chunk", o.chunk_size);
  r.read("kernels", o.kernels);
  r.read("warmup", o.warmup);
  r.read("iters", o.iters);
}

void check_layer_options(const LayerBenchOptions& o, const std::string& where) {
  expect_one_of(kMixers, o.mixer, where, "mixer");
  expect_one_of(kMemories, o.memory, where, "memory");
  expect_one_of(kDtypes, o.dtype, where, "dtype");
  expect_one_of(kDevices, o.device, where, "device");
  if (!o.kernels.empty()) expect_one_of({"auto", "aten", "fused"}, o.kernels, where, "kernels");
  if (o.mixer == "sdpa" && o.memory != "single")
    throw UserError(fmt::format("{}: mixer sdpa has no memory policy: memory must be single", where));
  for (const auto& [key, value] : std::map<std::string, int64_t>{{"capacity", o.capacity},
                                                                 {"max_length", o.max_length},
                                                                 {"heads", o.heads},
                                                                 {"head_dim", o.head_dim},
                                                                 {"chunk", o.chunk_size},
                                                                 {"iters", o.iters}})
    expect_positive(value, where, key);
  if (o.warmup < 0) throw UserError(fmt::format("{}: warmup must be at least 0, got {}", where, o.warmup));
}

std::vector<std::array<int64_t, 2>> read_shapes(const nlohmann::json& node, const std::string& where) {
  std::vector<std::array<int64_t, 2>> shapes;
  if (node.is_array()) {
    for (const auto& shape : node) {
      if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_integer() ||
          !shape[1].is_number_integer())
        break;
      shapes.push_back({shape[0].get<int64_t>(), shape[1].get<int64_t>()});
      expect_positive(shapes.back()[0], where, "shapes' batch");
      expect_positive(shapes.back()[1], where, "shapes' tokens");
    }
  }
  if (shapes.empty() || shapes.size() != node.size())
    throw UserError(fmt::format("{}: 'shapes' must list [batch, tokens] pairs, e.g. [[8, 2048]], got {}",
                                where, node.dump()));
  return shapes;
}

Comparison read_comparison(const nlohmann::json& node, const std::string& where, size_t num_shapes) {
  Comparison c;
  util::KeyReader r(node, where);
  std::string reference, entry;
  r.read("reference", reference);
  r.read("entry", entry);
  r.read("fwd_bwd_ms", c.fwd_bwd_ms);
  r.read("target_ratio", c.target_ratio);
  r.finish();
  if (reference.empty() == entry.empty())
    throw UserError(fmt::format("{}: give either 'reference' (with 'fwd_bwd_ms') or 'entry'", where));
  c.against = reference.empty() ? entry : reference;
  if (!reference.empty() && c.fwd_bwd_ms.size() != num_shapes) {
    throw UserError(fmt::format("{}: 'fwd_bwd_ms' needs one time per shape ({}), got {}", where, num_shapes,
                                c.fwd_bwd_ms.size()));
  }
  if (!entry.empty() && !c.fwd_bwd_ms.empty())
    throw UserError(fmt::format("{}: 'fwd_bwd_ms' goes with 'reference', not with 'entry'", where));
  for (const double ms : c.fwd_bwd_ms) {
    if (!(ms > 0)) throw UserError(fmt::format("{}: 'fwd_bwd_ms' must be positive times, got {}", where, ms));
  }
  if (c.target_ratio < 0)
    throw UserError(fmt::format("{}: 'target_ratio' must be positive, got {}", where, c.target_ratio));
  return c;
}

LayerEntry read_layer(const nlohmann::json& node, const std::string& where,
                      const LayerBenchOptions& defaults) {
  LayerEntry entry;
  entry.options = defaults;
  util::KeyReader r(node, where);
  nlohmann::json shapes, compare = nlohmann::json::array();
  r.read("name", entry.name);
  read_layer_options(r, entry.options);
  r.read("shapes", shapes);
  r.read("compare", compare);
  r.finish();
  if (entry.name.empty()) throw UserError(fmt::format("{}: the entry needs a 'name'", where));
  const std::string at = fmt::format("{} ('{}')", where, entry.name);
  check_layer_options(entry.options, at);
  entry.shapes = read_shapes(shapes, at);
  if (!compare.is_array()) throw UserError(fmt::format("{}: 'compare' must be a list", at));
  for (size_t i = 0; i < compare.size(); ++i)
    entry.compare.push_back(
        read_comparison(compare[i], fmt::format("{}: compare[{}]", at, i), entry.shapes.size()));
  return entry;
}

ModelEntry read_model(const nlohmann::json& node, const std::string& where) {
  ModelEntry entry;
  util::KeyReader r(node, where);
  r.read("name", entry.name);
  r.read("config", entry.config);
  r.read("set", entry.overrides);
  r.read("warmup", entry.options.warmup);
  r.read("steps", entry.options.steps);
  r.read("target_tokens_per_s", entry.target_tokens_per_s);
  r.finish();
  if (entry.config.empty()) throw UserError(fmt::format("{}: the entry needs a 'config' file", where));
  if (entry.name.empty()) entry.name = std::filesystem::path(entry.config).stem().string();
  const std::string at = fmt::format("{} ('{}')", where, entry.name);
  expect_positive(entry.options.steps, at, "steps");
  if (entry.options.warmup < 0)
    throw UserError(fmt::format("{}: warmup must be at least 0, got {}", at, entry.options.warmup));
  if (entry.target_tokens_per_s < 0)
    throw UserError(
        fmt::format("{}: 'target_tokens_per_s' must be positive, got {}", at, entry.target_tokens_per_s));
  return entry;
}

// ---- the summary ----

std::string shape_text(const nlohmann::json& r) {
  return fmt::format("({}, {}, {}, {})", r.at("B").get<int64_t>(), r.at("T").get<int64_t>(),
                     r.at("H").get<int64_t>(), r.at("D").get<int64_t>());
}

std::string number(double x) {
  return fmt::format("{:.{}f}", x, x >= 100 ? 0 : 2);
}

/// The measurement of `entry` at shape `shape`, if it has run.
const nlohmann::json* find_layer(const std::vector<nlohmann::json>& results, const std::string& entry,
                                 size_t shape) {
  for (const auto& r : results) {
    if (r.at("kind") == "layer" && r.at("entry") == entry && r.at("shape_index") == shape) return &r;
  }
  return nullptr;
}

/// A line of the layer table: an entry's measurement at one shape against one of its comparisons (none when
/// it has none); `theirs_ms` is empty when the entry compared with has not run.
struct LayerLine {
  const LayerEntry* entry;
  const nlohmann::json* result;
  const Comparison* comparison;
  std::optional<double> theirs_ms;

  double ours_ms() const { return result->at("fwd_bwd_ms").get<double>(); }
  double ratio() const { return ours_ms() / *theirs_ms; }
};

std::vector<LayerLine> layer_lines(const BenchSuite& suite, const std::vector<nlohmann::json>& results) {
  std::vector<LayerLine> lines;
  for (const LayerEntry& entry : suite.layers) {
    for (size_t i = 0; i < entry.shapes.size(); ++i) {
      const nlohmann::json* r = find_layer(results, entry.name, i);
      if (r == nullptr) continue;
      if (entry.compare.empty()) lines.push_back({&entry, r, nullptr, std::nullopt});
      for (const Comparison& c : entry.compare) {
        std::optional<double> theirs;
        if (!c.fwd_bwd_ms.empty()) {
          theirs = c.fwd_bwd_ms[i];
        } else if (const nlohmann::json* other = find_layer(results, c.against, i)) {
          theirs = other->at("fwd_bwd_ms").get<double>();
        }
        lines.push_back({&entry, r, &c, theirs});
      }
    }
  }
  return lines;
}

std::string target_cells(double ratio, double target) {
  if (target <= 0) return "– | –";
  return fmt::format("≤ {} | {}", number(target), ratio <= target ? "yes" : "**no**");
}

std::string summary_markdown(const BenchSuite& suite, const std::vector<nlohmann::json>& results,
                             const std::string& started) {
  std::string md = fmt::format(
      "# Benchmark suite `{}`\n\nFrom `{}`, dla {}, started {}. Layer times are the mean fwd+bwd (fwd) of "
      "the timed runs in ms; a ratio is ours / theirs, and meets its target when at most the target.\n",
      suite.name, suite.file.string(), DLA_VERSION, started);
  if (!suite.layers.empty()) {
    md +=
        "\n## Layers\n\n| entry | (B, T, H, D) | device | fwd+bwd (fwd) ms | against | their ms | ratio | "
        "target | met |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (const LayerLine& line : layer_lines(suite, results)) {
      const nlohmann::json& r = *line.result;
      md += fmt::format("| {} | {} | {} | {} ({}) |", line.entry->name, shape_text(r),
                        r.at("device").get<std::string>(), number(line.ours_ms()),
                        number(r.at("fwd_ms").get<double>()));
      if (line.comparison == nullptr) {
        md += " – | – | – | – | – |\n";
      } else if (!line.theirs_ms) {
        md += fmt::format(" {} | not run | – | – | – |\n", line.comparison->against);
      } else {
        md += fmt::format(" {} | {} | {:.2f} | {} |\n", line.comparison->against, number(*line.theirs_ms),
                          line.ratio(), target_cells(line.ratio(), line.comparison->target_ratio));
      }
    }
  }
  if (!suite.models.empty()) {
    md +=
        "\n## Training steps\n\n| entry | device | batch × seq | tokens/s | step ms | MFU | peak memory | "
        "target tokens/s | met |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (const ModelEntry& entry : suite.models) {
      for (const auto& r : results) {
        if (r.at("kind") != "model" || r.at("entry") != entry.name) continue;
        const double tokens_per_s = r.at("tokens_per_s").get<double>();
        const std::string memory = r.contains("peak_memory_gib")
                                       ? fmt::format("{:.1f} GiB", r.at("peak_memory_gib").get<double>())
                                       : "–";
        const std::string target =
            entry.target_tokens_per_s > 0
                ? fmt::format("{:.0f} | {}", entry.target_tokens_per_s,
                              tokens_per_s >= entry.target_tokens_per_s ? "yes" : "**no**")
                : "– | –";
        md += fmt::format("| {} | {} | {} × {} | {:.0f} | {:.1f} | {:.1f}% | {} | {} |\n", entry.name,
                          r.at("device").get<std::string>(), r.at("batch").get<int64_t>(),
                          r.at("seq_len").get<int64_t>(), tokens_per_s, r.at("step_ms").get<double>(),
                          100 * r.at("mfu").get<double>(), memory, target);
      }
    }
  }
  return md;
}

/// The layer comparisons as bars of ours / theirs from parity on a log₂ scale (left of the line: faster),
/// green where the target is met, red where it is missed, grey without one; a tick marks each target. Ratios
/// beyond the scale end at its edge and keep their value in the label. Empty without a ratio to draw.
std::string ratios_svg(const BenchSuite& suite, const std::vector<LayerLine>& all_lines) {
  std::vector<LayerLine> lines;
  std::copy_if(all_lines.begin(), all_lines.end(), std::back_inserter(lines),
               [](const LayerLine& l) { return l.theirs_ms.has_value(); });
  if (lines.empty()) return "";
  constexpr double kLabelWidth = 360, kPlotWidth = 420, kRowHeight = 22, kTop = 56, kMaxOctaves = 6;
  double octaves = 1;
  for (const LayerLine& l : lines) {
    octaves = std::max(octaves, std::ceil(std::abs(std::log2(l.ratio()))));
    if (l.comparison->target_ratio > 0)
      octaves = std::max(octaves, std::ceil(std::abs(std::log2(l.comparison->target_ratio))));
  }
  octaves = std::min(octaves, kMaxOctaves);
  const auto x_of = [&](double ratio) {
    const double octave = std::clamp(std::log2(ratio), -octaves, octaves);
    return kLabelWidth + kPlotWidth / 2 * (1 + octave / octaves);
  };
  const double height = kTop + kRowHeight * static_cast<double>(lines.size()) + 40;
  const double width = kLabelWidth + kPlotWidth + 80;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" "
      "font-size=\"15\">Suite {2}: fwd+bwd time, ours / theirs (left of 1×: faster)</text>\n",
      width, height, suite.name);
  const double bottom = kTop + kRowHeight * static_cast<double>(lines.size());
  for (double octave = -octaves; octave <= octaves; ++octave) {
    const double x = x_of(std::exp2(octave));
    const std::string label = octave >= 0 ? fmt::format("{:.0f}×", std::exp2(octave))
                                          : fmt::format("1/{:.0f}×", std::exp2(-octave));
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"{3}\"/>\n<text x=\"{0:.1f}\" "
        "y=\"{4}\" text-anchor=\"middle\">{5}</text>\n",
        x, kTop - 8, bottom, octave == 0 ? "black" : "#ddd", bottom + 16, label);
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    const LayerLine& l = lines[i];
    const double y = kTop + kRowHeight * static_cast<double>(i), ratio = l.ratio(),
                 target = l.comparison->target_ratio;
    const char* colour = target <= 0 ? "#999" : ratio <= target ? "#2ca02c" : "#d62728";
    const double x0 = std::min(x_of(1), x_of(ratio)), x1 = std::max(x_of(1), x_of(ratio));
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{} (B {}, T {}) vs {}</text>\n<rect "
        "class=\"bar\" "
        "x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"/>\n<text x=\"{:.1f}\" "
        "y=\"{:.1f}\">{:.2f}×</text>\n",
        kLabelWidth - 8, y + 15, l.entry->name, l.result->at("B").get<int64_t>(),
        l.result->at("T").get<int64_t>(), l.comparison->against, x0, y + 4, std::max(x1 - x0, 1.0),
        kRowHeight - 8, colour, x_of(std::max(ratio, 1.0)) + 4, y + 15, ratio);
    if (target > 0) {
      svg += fmt::format(
          "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"black\" "
          "stroke-width=\"2\"/>\n",
          x_of(target), y + 1, y + kRowHeight - 1);
    }
  }
  return svg + "</svg>\n";
}

void write_file(const std::filesystem::path& file, const std::string& text) {
  io::write_file_atomic(file, std::as_bytes(std::span(text.data(), text.size())));
}

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M UTC", &utc);
  return text;
}

/// fn(), with a UserError it throws prefixed by the suite file and the entry.
template <class Fn>
nlohmann::json in_entry(const BenchSuite& suite, const std::string& entry, Fn&& fn) {
  try {
    return fn();
  } catch (const UserError& e) {
    throw UserError(fmt::format("{}: entry '{}': {}", suite.file.string(), entry, e.what()));
  }
}

}  // namespace

BenchSuite load_bench_suite(const std::filesystem::path& file) {
  const nlohmann::json root = util::load_yaml(file, "benchmark suite");
  const std::string where = file.string();
  BenchSuite suite;
  suite.file = file;
  nlohmann::json defaults = nlohmann::json::object(), layers = nlohmann::json::array(),
                 models = nlohmann::json::array();
  util::KeyReader r(root, where);
  r.read("suite", suite.name);
  r.read("peak_tflops", suite.peak_tflops);
  r.read("defaults", defaults);
  r.read("layers", layers);
  r.read("models", models);
  r.finish();
  if (suite.name.empty()) suite.name = file.stem().string();
  if (!(suite.peak_tflops > 0))
    throw UserError(fmt::format("{}: 'peak_tflops' must be positive, got {}", where, suite.peak_tflops));

  LayerBenchOptions layer_defaults;
  util::KeyReader d(defaults, where + ": defaults");
  read_layer_options(d, layer_defaults);
  d.finish();
  if (!layers.is_array() || !models.is_array())
    throw UserError(fmt::format("{}: 'layers' and 'models' must be lists", where));
  if (layers.empty() && models.empty())
    throw UserError(fmt::format("{}: the suite lists no 'layers' and no 'models'", where));

  std::set<std::string> names;
  for (size_t i = 0; i < layers.size(); ++i) {
    suite.layers.push_back(read_layer(layers[i], fmt::format("{}: layers[{}]", where, i), layer_defaults));
    if (!names.insert(suite.layers.back().name).second)
      throw UserError(fmt::format("{}: two entries are named '{}'", where, suite.layers.back().name));
  }
  for (const LayerEntry& entry : suite.layers) {
    for (const Comparison& c : entry.compare) {
      if (!c.fwd_bwd_ms.empty()) continue;
      const auto other = std::find_if(suite.layers.begin(), suite.layers.end(),
                                      [&](const LayerEntry& e) { return e.name == c.against; });
      if (other == suite.layers.end() || other->name == entry.name) {
        throw UserError(
            fmt::format("{}: layer '{}' is compared with entry '{}', which is not another layer "
                        "entry of the suite",
                        where, entry.name, c.against));
      }
      if (other->shapes != entry.shapes) {
        throw UserError(fmt::format("{}: layer '{}' is compared with entry '{}', whose shapes differ", where,
                                    entry.name, c.against));
      }
    }
  }
  for (size_t i = 0; i < models.size(); ++i) {
    suite.models.push_back(read_model(models[i], fmt::format("{}: models[{}]", where, i)));
    if (!names.insert(suite.models.back().name).second)
      throw UserError(fmt::format("{}: two entries are named '{}'", where, suite.models.back().name));
  }
  return suite;
}

BenchSuite only_entries(const BenchSuite& suite, const std::vector<std::string>& names) {
  std::vector<std::string> all;
  for (const LayerEntry& entry : suite.layers)
    all.push_back(entry.name);
  for (const ModelEntry& entry : suite.models)
    all.push_back(entry.name);
  const std::set<std::string> wanted(names.begin(), names.end());
  for (const std::string& name : wanted) {
    if (std::find(all.begin(), all.end(), name) == all.end()) {
      throw UserError(fmt::format("--only '{}': {} has no entry of that name; its entries: {}", name,
                                  suite.file.string(), fmt::join(all, ", ")));
    }
  }
  BenchSuite kept = suite;
  std::erase_if(kept.layers, [&](const LayerEntry& e) { return wanted.count(e.name) == 0; });
  std::erase_if(kept.models, [&](const ModelEntry& e) { return wanted.count(e.name) == 0; });
  return kept;
}

std::filesystem::path run_bench_suite(const BenchSuite& suite, const std::filesystem::path& out_dir) {
  if (std::filesystem::exists(out_dir) && !std::filesystem::is_directory(out_dir))
    throw UserError(fmt::format("--out '{}' exists and is not a directory", out_dir.string()));
  // Model configs are resolved before anything runs, so that a bad one stops the suite at once.
  std::vector<config::RunConfig> model_configs;
  for (const ModelEntry& entry : suite.models)
    model_configs.push_back(config::resolve_run_config(entry.config, entry.overrides).config);
  std::filesystem::create_directories(out_dir);

  size_t total = suite.models.size();
  for (const LayerEntry& entry : suite.layers)
    total += entry.shapes.size();
  const std::string started = utc_now();
  const std::filesystem::path summary = out_dir / "summary.md";
  std::vector<nlohmann::json> results;
  std::string lines;
  const auto record = [&](nlohmann::json result) {
    lines += result.dump() + "\n";
    results.push_back(std::move(result));
    write_file(out_dir / "results.jsonl", lines);
    write_file(summary, summary_markdown(suite, results, started));
    if (const std::string svg = ratios_svg(suite, layer_lines(suite, results)); !svg.empty())
      write_file(out_dir / "ratios.svg", svg);
  };

  // An entry's `kernels` holds for that entry only; the others keep the process's choice.
  const ops::KernelChoice process_kernels = ops::kernel_choice();
  for (const LayerEntry& entry : suite.layers) {
    for (size_t i = 0; i < entry.shapes.size(); ++i) {
      ops::set_kernel_choice(process_kernels);
      LayerBenchOptions options = entry.options;
      options.batch = entry.shapes[i][0];
      options.tokens = entry.shapes[i][1];
      nlohmann::json result = in_entry(suite, entry.name, [&] { return bench_layer(options); });
      spdlog::info("[{}/{}] {} (B {}, T {}): fwd+bwd {:.2f} ms, fwd {:.2f} ms", results.size() + 1, total,
                   entry.name, options.batch, options.tokens, result.at("fwd_bwd_ms").get<double>(),
                   result.at("fwd_ms").get<double>());
      result["kind"] = "layer";
      result["entry"] = entry.name;
      result["shape_index"] = i;
      record(std::move(result));
    }
  }
  ops::set_kernel_choice(process_kernels);
  for (size_t i = 0; i < suite.models.size(); ++i) {
    const ModelEntry& entry = suite.models[i];
    nlohmann::json result = in_entry(
        suite, entry.name, [&] { return bench_model(model_configs[i], entry.options, suite.peak_tflops); });
    spdlog::info("[{}/{}] {}: {:.0f} tokens/s, {:.1f} ms a step", results.size() + 1, total, entry.name,
                 result.at("tokens_per_s").get<double>(), result.at("step_ms").get<double>());
    result["kind"] = "model";
    result["entry"] = entry.name;
    record(std::move(result));
  }
  return summary;
}

}  // namespace dla::bench
