// AtomicFileWriter: temporary file, checked writes, fsync, rename over the destination, fsync of the
// directory.
#include "dla/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::io {
namespace {

std::filesystem::path temp_path_for(const std::filesystem::path& path) {
  std::filesystem::path temp = path;
  temp += fmt::format(".tmp.{}", ::getpid());
  return temp;
}

/// The directory entry that rename() changes; "." for a bare file name.
std::filesystem::path directory_of(const std::filesystem::path& path) {
  return path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
}

/// Makes the rename itself durable. Some file systems cannot fsync a directory (EINVAL); there the rename is
/// as durable as that file system allows, so that is not an error.
int fsync_directory(const std::filesystem::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int error = ::fsync(fd) == 0 || errno == EINVAL ? 0 : errno;
  ::close(fd);
  return error;
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::filesystem::path path)
    : path_(std::move(path)), temp_path_(temp_path_for(path_)) {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    const int error = errno;
    throw UserError(fmt::format("cannot write '{}': cannot create '{}': {}", path_.string(),
                                temp_path_.string(), std::generic_category().message(error)));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  discard();
}

namespace {

/// Fault injection for tests of full disks (docs/checkpoints.md): with DLA_FAULT_WRITE_LIMIT=N in the
/// environment, a file fails with ENOSPC once more than N bytes have been written to it.
bool over_write_limit(std::size_t bytes_in_file) {
  const char* limit = std::getenv("DLA_FAULT_WRITE_LIMIT");
  return limit != nullptr && bytes_in_file > std::strtoull(limit, nullptr, 10);
}

}  // namespace

void AtomicFileWriter::write(std::span<const std::byte> bytes) {
  if (fd_ < 0) throw std::logic_error("AtomicFileWriter::write after commit or failure: " + path_.string());
  bytes_written_ += bytes.size();
  if (over_write_limit(bytes_written_)) fail("write", temp_path_, ENOSPC);
  while (!bytes.empty()) {
    const ssize_t written = ::write(fd_, bytes.data(), bytes.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      fail("write", temp_path_, errno);
    }
    bytes = bytes.subspan(static_cast<std::size_t>(written));
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) throw std::logic_error("AtomicFileWriter::commit after commit or failure: " + path_.string());
  if (::fsync(fd_) != 0) fail("sync", temp_path_, errno);
  // close() can report a deferred write error (e.g. on NFS), so it is checked too.
  const int close_status = ::close(std::exchange(fd_, -1));
  if (close_status != 0) fail("close", temp_path_, errno);
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail("rename to", path_, errno);
  temp_path_.clear();
  if (const int error = fsync_directory(directory_of(path_)); error != 0) {
    throw UserError(fmt::format("wrote '{}' but cannot sync its directory: {}", path_.string(),
                                std::generic_category().message(error)));
  }
}

void AtomicFileWriter::fail(const char* action, const std::filesystem::path& file, int error) {
  // Formatted before discard(), which clears temp_path_ that `file` may refer to.
  UserError failure(fmt::format("cannot write '{}': {} '{}' failed: {}", path_.string(), action,
                                file.string(), std::generic_category().message(error)));
  discard();
  throw failure;
}

void AtomicFileWriter::discard() noexcept {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  if (!temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes);
  writer.commit();
}

}  // namespace dla::io
