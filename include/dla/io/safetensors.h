// Safetensors files: SafetensorsReader (memory-mapped, every header field validated) and save_safetensors
// (written atomically). Layout: 8-byte little-endian header length N, N bytes of JSON header, tensor bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dla/io/mapped_file.h"

namespace dla::io {

// Supported dtypes, by safetensors name: F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U64, U32,
// U16, U8, BOOL. Each maps to the at::ScalarType of the same width and encoding.

using SafetensorsMetadata = std::map<std::string, std::string>;
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// One tensor's header entry. begin and end are byte offsets relative to the start of the data buffer.
struct SafetensorsEntry {
  std::string name;
  at::ScalarType dtype = at::ScalarType::Undefined;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

/// A safetensors file, mapped and validated when constructed: any malformed header, unknown dtype, offset
/// outside the data, size mismatch or overlap throws dla::UserError naming the file and the fault. Gaps
/// between tensors and trailing bytes are allowed. Tensors are read as CPU copies, because offsets need not
/// be aligned and the copies must outlive the mapping.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(std::filesystem::path path);

  const std::filesystem::path& path() const { return file_.path(); }
  /// Entries in data order: by begin offset, ties (empty tensors) by name.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  /// Tensor names in data order.
  std::vector<std::string> names() const;
  bool contains(std::string_view name) const;
  /// Throws dla::UserError listing some of the names present when the file has no tensor `name`.
  const SafetensorsEntry& entry(std::string_view name) const;
  /// The header's "__metadata__" map; empty when the file has none.
  const SafetensorsMetadata& metadata() const { return metadata_; }

  /// A contiguous CPU copy of the tensor `name`.
  at::Tensor tensor(std::string_view name) const;
  /// Every tensor, keyed by name.
  std::map<std::string, at::Tensor> load_all() const;

 private:
  at::Tensor read(const SafetensorsEntry& entry) const;

  MappedFile file_;
  std::span<const std::byte> data_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in entries_
  SafetensorsMetadata metadata_;
};

/// Writes `tensors` (any device, any strides; copied to CPU one at a time) in the given order, with
/// `metadata` as "__metadata__" when it is not empty. The JSON header is compact and padded with spaces to a
/// multiple of 8 bytes. The file is replaced atomically; I/O failures throw dla::UserError. Duplicate names,
/// the reserved name "__metadata__", undefined or non-strided tensors and unsupported dtypes are programming
/// errors (c10::Error).
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata = {});

}  // namespace dla::io
