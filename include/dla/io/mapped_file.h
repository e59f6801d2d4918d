// MappedFile: a whole file mapped read-only into memory, so readers can parse it in place.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>

namespace dla::io {

/// A whole file mapped read-only. Move-only; the mapping lives until destruction. An empty file has no
/// mapping and an empty bytes() span.
class MappedFile {
 public:
  /// Throws dla::UserError naming the path and the reason when the file is missing, is not a regular file,
  /// cannot be read or cannot be mapped.
  explicit MappedFile(std::filesystem::path path);
  ~MappedFile();

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void unmap() noexcept;

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace dla::io
