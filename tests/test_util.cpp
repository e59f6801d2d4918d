// Helpers shared by tests.
#include "test_util.h"

#include <cstdlib>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include "catch.h"

namespace dla::test {

TempDir::TempDir() {
  std::random_device entropy;
  path_ = std::filesystem::temp_directory_path() /
          ("dla-test-" + std::to_string(getpid()) + "-" + std::to_string(entropy()));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::filesystem::path fixtures_root() {
  const char* env = std::getenv("DLA_FIXTURES");
  return env != nullptr && *env != '\0' ? std::filesystem::path(env)
                                        : std::filesystem::path(DLA_SOURCE_DIR "/../shared/fixtures");
}

std::filesystem::path fixture_file(const std::string& relative) {
  const std::filesystem::path path = fixtures_root() / relative;
  INFO("fixture '" << path.string() << "' must exist; set DLA_FIXTURES to the folder holding fla/ and dla/");
  REQUIRE(std::filesystem::is_regular_file(path));
  return path;
}

void write_text(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + file.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

namespace {

CommandResult run_shell(const std::string& args, const std::filesystem::path& cwd,
                        const char* stderr_redirect) {
  std::string command = std::string("'") + DLA_BINARY + "' " + args + " " + stderr_redirect;
  if (!cwd.empty()) command = "cd '" + cwd.string() + "' && " + command;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  CommandResult result;
  std::array<char, 4096> buffer{};
  while (const std::size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe))
    result.output.append(buffer.data(), n);
  const int raw = pclose(pipe);
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return result;
}

}  // namespace

CommandResult run_dla(const std::string& args, const std::filesystem::path& cwd) {
  return run_shell(args, cwd, "2>&1");
}

CommandResult run_dla_stdout(const std::string& args, const std::filesystem::path& cwd) {
  return run_shell(args, cwd, "2>/dev/null");
}

}  // namespace dla::test
