// AtomicFileWriter and write_file_atomic: replace a file so that readers, even after a crash, see either the
// old content or the complete new one.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>

namespace dla::io {

/// Streams bytes into "<path>.tmp.<pid>" in the destination's directory; commit() fsyncs it, renames it
/// over `path` and fsyncs the directory. Destroying the writer before commit() removes the temporary and
/// leaves `path` untouched. Every failure throws dla::UserError naming the file and the reason, after
/// removing the temporary. After a failure or a commit the writer takes no more bytes.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path);
  ~AtomicFileWriter();

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(std::span<const std::byte> bytes);
  void commit();

  const std::filesystem::path& path() const { return path_; }
  /// Empty once the writer has committed or removed the temporary.
  const std::filesystem::path& temp_path() const { return temp_path_; }

 private:
  [[noreturn]] void fail(const char* action, const std::filesystem::path& file, int error);
  void discard() noexcept;

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  std::size_t bytes_written_ = 0;
};

/// Writes `bytes` to `path` through an AtomicFileWriter.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes);

}  // namespace dla::io
