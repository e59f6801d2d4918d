// Benchmark suites (`dla bench suite FILE.yaml`): the layer and model measurements a YAML file lists, run in
// one process. Each layer time is set against another project's times or another entry of the suite (the
// issue's targets are ratios of both kinds); results go to results.jsonl and a Markdown summary.
#pragma once

#include <array>
#include <filesystem>
#include <string>
#include <vector>

#include "dla/bench/bench.h"

namespace dla::bench {

/// What a layer entry's fwd+bwd time is set against: another project's times, one per shape of the entry,
/// or another layer entry of the suite at the same shape.
struct Comparison {
  std::string against;             ///< the reference's or the entry's name
  std::vector<double> fwd_bwd_ms;  ///< a reference's times; empty for an entry
  double target_ratio = 0;         ///< met when ours / theirs ≤ this; 0: no target
};

struct LayerEntry {
  std::string name;
  LayerBenchOptions options;                   ///< batch and tokens are set per shape
  std::vector<std::array<int64_t, 2>> shapes;  ///< (B, T)
  std::vector<Comparison> compare;
};

struct ModelEntry {
  std::string name;                    ///< the config's file name without extension unless given
  std::string config;                  ///< a model config file
  std::vector<std::string> overrides;  ///< KEY=VALUE, as `--set`
  ModelBenchOptions options;
  double target_tokens_per_s = 0;  ///< 0: no target
};

struct BenchSuite {
  std::string name;
  std::filesystem::path file;
  double peak_tflops = 989;  ///< for MFU: the H200's dense bf16 peak
  std::vector<LayerEntry> layers;
  std::vector<ModelEntry> models;
};

/// Reads and checks a suite file (docs/benchmarks.md#benchmark-suites); bad keys and values are UserErrors
/// naming the file, the entry and the key.
BenchSuite load_bench_suite(const std::filesystem::path& file);

/// The suite with only the entries named in `names` (layers and models, in the suite's order); a comparison
/// with an entry left out shows as not run. An unknown name is a UserError listing the entries.
BenchSuite only_entries(const BenchSuite& suite, const std::vector<std::string>& names);

/// Runs every measurement in order, logging each, and after each one rewrites out_dir/results.jsonl (one
/// JSON object per measurement) and out_dir/summary.md (the tables with their comparisons), so that a run
/// cut short keeps what it measured. Returns the summary's path.
std::filesystem::path run_bench_suite(const BenchSuite& suite, const std::filesystem::path& out_dir);

}  // namespace dla::bench
