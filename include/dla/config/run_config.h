// The run config: one YAML section per component, each a struct with defaults in code. `dla config docs`
// prints docs/config.md from these declarations.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dla/checkpoint/options.h"
#include "dla/config/schema.h"
#include "dla/data/options.h"
#include "dla/dist/options.h"
#include "dla/eval/options.h"
#include "dla/model/options.h"
#include "dla/train/options.h"

namespace dla::config {

enum class LogLevel { trace, debug, info, warn, error };
template <>
struct EnumNames<LogLevel> {
  static constexpr std::array<std::string_view, 5> names{"trace", "debug", "info", "warn", "error"};
};

/// Identity and place of a run.
struct RunOptions {
  std::string name = "default";  ///< the run directory's name under `dir`
  std::string dir = "runs";      ///< parent of run directories
  int64_t seed = 1234;           ///< seeds every random number generator of the run

  template <class V>
  void visit(V& v) {
    v.field("name", name, "Name of the run; its directory is `<run.dir>/<run.name>`.");
    v.field("dir", dir, "Folder that holds run directories (relative to the working directory).");
    v.field("seed", seed, "Seed of every random number generator of the run.", Bounds::at_least(0));
  }
};

struct LogOptions {
  LogLevel level = LogLevel::info;  ///< console and file verbosity; `--log-level` overrides it

  template <class V>
  void visit(V& v) {
    v.field("level", level,
            "Verbosity of the console and of the run's log file; `--log-level` overrides it.");
  }
};

struct RunConfig {
  RunOptions run;
  LogOptions log;
  model::ModelOptions model;
  data::DataOptions data;
  train::TrainOptions train;
  train::OptimOptions optim;
  checkpoint::CheckpointOptions checkpoint;
  dist::DistOptions dist;
  eval::TrainingEvalOptions eval;

  template <class V>
  void visit(V& v) {
    v.section("run", run, "Where a run's files go and how it is seeded.");
    v.section("log", log, "Logging.");
    v.section("model", model, "The causal language model: sizes, mixer and its options.");
    v.section("data", data, "Training data.");
    v.section("train", train, "The training loop.");
    v.section("optim", optim, "AdamW and the learning-rate schedule.");
    v.section("checkpoint", checkpoint, "Training checkpoints in the run directory (docs/checkpoints.md).");
    v.section("dist", dist, "Data-parallel training over several processes (docs/distributed.md).");
    v.section("eval", eval, "An evaluation suite run during training (docs/eval.md).");
  }

  /// Checks that span several keys or that the bounds cannot express; throws ConfigError naming the key.
  void validate() const;
};

/// A RunConfig with the place every non-default value came from.
struct ResolvedConfig {
  RunConfig config;
  SourceMap sources;

  /// The complete config as YAML: every key, defaults included. Reading it back gives the same config.
  std::string to_yaml() const;
};

/// Defaults, then `file` (when given), then each `KEY=VALUE` of `overrides` in order, then validate().
ResolvedConfig resolve_run_config(const std::optional<std::string>& file,
                                  const std::vector<std::string>& overrides);

/// Markdown reference of every key (docs/config.md).
std::string run_config_markdown();

}  // namespace dla::config
