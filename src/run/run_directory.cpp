// Creation of a run directory.
#include "dla/run/run_directory.h"

#include <span>

#include "dla/io/atomic_file.h"
#include "dla/util/error.h"
#include "dla/util/log.h"

namespace dla::run {

RunDirectory RunDirectory::open(const config::ResolvedConfig& resolved,
                                const std::optional<std::filesystem::path>& root, bool writer) {
  RunDirectory dir;
  dir.root = root ? *root : std::filesystem::path(resolved.config.run.dir) / resolved.config.run.name;
  dir.config_file = dir.root / "config.yaml";
  dir.log_file = dir.root / "log.txt";
  if (!writer) return dir;
  std::error_code ec;
  std::filesystem::create_directories(dir.root, ec);
  if (ec) throw UserError("cannot create the run directory '" + dir.root.string() + "': " + ec.message());
  const std::string yaml = resolved.to_yaml();
  io::write_file_atomic(dir.config_file, std::as_bytes(std::span(yaml.data(), yaml.size())));
  log::add_file(dir.log_file);
  return dir;
}

}  // namespace dla::run
