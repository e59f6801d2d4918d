// Tests of AtomicFileWriter and write_file_atomic: replacement, abandonment and failing writes.
#include "dla/io/atomic_file.h"

#include <sys/resource.h>

#include <csignal>
#include <stdexcept>
#include <string>
#include <vector>

#include "catch.h"
#include "dla/util/error.h"
#include "test_util.h"

namespace {

using dla::io::AtomicFileWriter;
using dla::test::has_substr;

std::span<const std::byte> bytes_of(const std::string& text) {
  return std::as_bytes(std::span(text));
}

std::size_t entries_in(const std::filesystem::path& directory) {
  return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(directory), {}));
}

/// Caps the size of files this process writes, so that writes fail with EFBIG (SIGXFSZ is ignored meanwhile).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_limit_);
    saved_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{bytes, saved_limit_.rlim_max};
    ::setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_limit_);
    std::signal(SIGXFSZ, saved_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit saved_limit_{};
  void (*saved_handler_)(int) = nullptr;
};

}  // namespace

TEST_CASE("write_file_atomic creates and replaces a file, leaving no temporary", "[io][atomic_file]") {
  const dla::test::TempDir dir;
  const auto path = dir / "out.bin";
  dla::io::write_file_atomic(path, bytes_of("first"));
  REQUIRE(dla::test::read_text(path) == "first");
  dla::io::write_file_atomic(path, bytes_of("second, longer"));
  REQUIRE(dla::test::read_text(path) == "second, longer");
  REQUIRE(entries_in(dir.path()) == 1);
}

TEST_CASE("AtomicFileWriter streams several writes and commits them", "[io][atomic_file]") {
  const dla::test::TempDir dir;
  const auto path = dir / "out.bin";
  AtomicFileWriter writer(path);
  writer.write(bytes_of("head"));
  writer.write({});
  writer.write(bytes_of("|tail"));
  REQUIRE(!std::filesystem::exists(path));
  REQUIRE(std::filesystem::exists(writer.temp_path()));
  writer.commit();
  REQUIRE(dla::test::read_text(path) == "head|tail");
  REQUIRE(entries_in(dir.path()) == 1);
  REQUIRE_THROWS_AS(writer.write(bytes_of("more")), std::logic_error);
  REQUIRE_THROWS_AS(writer.commit(), std::logic_error);
}

TEST_CASE("AtomicFileWriter destroyed without commit leaves the destination untouched", "[io][atomic_file]") {
  const dla::test::TempDir dir;
  const auto path = dir / "out.bin";
  dla::test::write_text(path, "original");
  std::filesystem::path temp;
  {
    AtomicFileWriter writer(path);
    writer.write(bytes_of("replacement that is never committed"));
    temp = writer.temp_path();
    REQUIRE(std::filesystem::exists(temp));
  }
  REQUIRE(!std::filesystem::exists(temp));
  REQUIRE(dla::test::read_text(path) == "original");
  REQUIRE(entries_in(dir.path()) == 1);
}

TEST_CASE("AtomicFileWriter in a missing directory throws UserError naming the path", "[io][atomic_file]") {
  const dla::test::TempDir dir;
  const auto path = dir / "no_such_dir" / "out.bin";
  REQUIRE_THROWS_AS(dla::io::write_file_atomic(path, bytes_of("x")), dla::UserError);
  REQUIRE_THROWS_WITH(dla::io::write_file_atomic(path, bytes_of("x")),
                      has_substr(path.string()) && has_substr("No such file or directory"));
}

TEST_CASE("A failing write throws UserError, removes the temporary and keeps the destination",
          "[io][atomic_file]") {
  const dla::test::TempDir dir;
  const auto path = dir / "out.bin";
  dla::test::write_text(path, "original");
  const std::string big(64 * 1024, 'x');
  {
    const FileSizeLimit limit(4096);
    REQUIRE_THROWS_WITH(dla::io::write_file_atomic(path, bytes_of(big)),
                        has_substr(path.string()) && has_substr("File too large"));
  }
  REQUIRE(dla::test::read_text(path) == "original");
  REQUIRE(entries_in(dir.path()) == 1);
}
