// Helpers shared by tests: temporary folders, files, and running the `dla` binary.
#pragma once

#include <filesystem>
#include <string>

namespace dla::test {

/// A fresh folder under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// The reference fixtures folder: $DLA_FIXTURES when set, else ../shared/fixtures beside the repository.
std::filesystem::path fixtures_root();
/// `relative` under fixtures_root(). REQUIREs that the file exists, so a missing fixture fails with its path
/// and the DLA_FIXTURES hint rather than skipping.
std::filesystem::path fixture_file(const std::string& relative);

void write_text(const std::filesystem::path& file, const std::string& text);
std::string read_text(const std::filesystem::path& file);

struct CommandResult {
  int status = -1;     ///< exit status
  std::string output;  ///< stdout and stderr together
};

/// Runs the built `dla` binary with `args` (a shell-quoted argument string) in `cwd` (default: current).
CommandResult run_dla(const std::string& args, const std::filesystem::path& cwd = {});
/// Like run_dla, but `output` holds standard output alone (for commands that print JSON there).
CommandResult run_dla_stdout(const std::string& args, const std::filesystem::path& cwd = {});

}  // namespace dla::test
