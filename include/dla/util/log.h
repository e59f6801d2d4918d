// Logging: one spdlog logger for the whole program, to the console (stderr) and, once a run directory
// exists, to its log file.
#pragma once

#include <filesystem>
#include <string_view>

namespace dla::log {

/// Installs the console logger. `level` is one of trace, debug, info, warn, error; `forced` when the user
/// gave it on the command line, which then wins over a run config's `log.level`.
void init(std::string_view level, bool forced);
/// A run config's `log.level`; ignored when the command line forced a level.
void apply_config_level(std::string_view level);
/// In a job of several ranks, every line names the rank, and ranks other than 0 show only warnings and
/// errors (unless the command line forced a level).
void set_rank(int rank, int world_size);
/// Also writes every message to `file` (appended: a resumed run keeps its earlier log).
void add_file(const std::filesystem::path& file);

}  // namespace dla::log
