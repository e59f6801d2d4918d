// MappedFile: open, fstat and mmap a whole file read-only; munmap on destruction.
#include "dla/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::io {
namespace {

[[noreturn]] void throw_os_error(const std::filesystem::path& path, const char* action, int error) {
  throw UserError(
      fmt::format("cannot {} '{}': {}", action, path.string(), std::generic_category().message(error)));
}

/// Closes the descriptor on every path out of the constructor; the mapping does not need it open.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() { ::close(fd_); }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

MappedFile::MappedFile(std::filesystem::path path) : path_(std::move(path)) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_os_error(path_, "open", errno);
  const FileDescriptor file(fd);

  struct stat status {};
  if (::fstat(file.get(), &status) != 0) throw_os_error(path_, "stat", errno);
  if (!S_ISREG(status.st_mode)) {
    throw UserError(fmt::format("cannot read '{}': not a regular file", path_.string()));
  }
  if (status.st_size == 0) return;

  void* mapping =
      ::mmap(nullptr, static_cast<std::size_t>(status.st_size), PROT_READ, MAP_PRIVATE, file.get(), 0);
  if (mapping == MAP_FAILED) throw_os_error(path_, "map", errno);
  data_ = static_cast<const std::byte*>(mapping);
  size_ = static_cast<std::size_t>(status.st_size);
}

MappedFile::~MappedFile() {
  unmap();
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::unmap() noexcept {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace dla::io
