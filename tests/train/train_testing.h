// Helpers for the tests that run the trainer: a tiny config, a run directory without a log file, and a
// quieter log.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "dla/config/run_config.h"
#include "dla/run/run_directory.h"

namespace dla::test {

/// A GDN of one layer, hidden 16, learning MQAR over 16 tokens (a step takes milliseconds): vocab 32, 5 steps
/// of 4 sequences, logged every 2 steps, on the CPU; then `overrides`.
config::ResolvedConfig tiny_train_config(const std::vector<std::string>& overrides = {});

/// A run directory without RunDirectory::open, which would add a log file to the process's logger.
run::RunDirectory test_run_directory(const std::filesystem::path& root);

/// The rows of a JSON-lines file such as metrics.jsonl.
std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& file);
/// `key` of every row (each must have it).
std::vector<double> column(const std::vector<nlohmann::json>& rows, const std::string& key);

/// Keeps the trainer's progress lines out of the test output.
class QuietLog {
 public:
  QuietLog() : saved_(spdlog::get_level()) { spdlog::set_level(spdlog::level::warn); }
  ~QuietLog() { spdlog::set_level(saved_); }
  QuietLog(const QuietLog&) = delete;
  QuietLog& operator=(const QuietLog&) = delete;

 private:
  spdlog::level::level_enum saved_;
};

}  // namespace dla::test
