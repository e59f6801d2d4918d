// A run directory `<run.dir>/<run.name>/`: the resolved config, the log, and later metrics and
// checkpoints of one run.
#pragma once

#include <filesystem>
#include <optional>

#include "dla/config/run_config.h"

namespace dla::run {

struct RunDirectory {
  std::filesystem::path root;
  std::filesystem::path config_file;  ///< config.yaml: the resolved config, every key
  std::filesystem::path log_file;     ///< log.txt: everything the console shows, appended across resumes

  /// Creates the directory (and parents), writes config.yaml atomically and starts logging to log.txt.
  /// The directory is `root` when given, else `<run.dir>/<run.name>`. Only the `writer` (rank 0 of a
  /// data-parallel job) writes; the other ranks just name the same directory.
  static RunDirectory open(const config::ResolvedConfig& resolved,
                           const std::optional<std::filesystem::path>& root = std::nullopt,
                           bool writer = true);
};

}  // namespace dla::run
