// Logging set-up; the rest of the code logs through spdlog's default logger.
#include "dla/util/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "dla/util/error.h"

namespace dla::log {
namespace {
std::string pattern = "[%Y-%m-%d %H:%M:%S] [%^%l%$] %v";
bool level_forced = false;
bool secondary_rank = false;  ///< a rank other than 0 of a job: warnings and errors only, unless forced

void set_level(spdlog::level::level_enum level) {
  if (secondary_rank && !level_forced) level = std::max(level, spdlog::level::warn);
  spdlog::set_level(level);
}

void set_level(std::string_view level) {
  set_level(spdlog::level::from_str(std::string(level)));
}
}  // namespace

void init(std::string_view level, bool forced) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("dla", console);
  logger->set_pattern(pattern);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  set_level(level);
  level_forced = forced;
}

void apply_config_level(std::string_view level) {
  if (!level_forced) set_level(level);
}

void set_rank(int rank, int world_size) {
  if (world_size <= 1) return;
  pattern = fmt::format("[%Y-%m-%d %H:%M:%S] [rank {}] [%^%l%$] %v", rank);
  spdlog::default_logger()->set_pattern(pattern);
  secondary_rank = rank != 0;
  set_level(spdlog::get_level());
}

void add_file(const std::filesystem::path& file) {
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file.string(), /*truncate=*/false);
    sink->set_pattern(pattern);
    spdlog::default_logger()->sinks().push_back(sink);
  } catch (const spdlog::spdlog_ex& e) {
    throw UserError("cannot open the log file '" + file.string() + "': " + e.what());
  }
}

}  // namespace dla::log
