// SafetensorsReader (header parsing and validation, copies out of the mapping) and save_safetensors (header
// layout, streaming the tensor bytes through AtomicFileWriter).
#include "dla/io/safetensors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <tuple>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "dla/io/atomic_file.h"
#include "dla/util/error.h"

namespace dla::io {

// Safetensors stores little-endian data, which is copied into tensors as is.
static_assert(std::endian::native == std::endian::little,
              "dla's safetensors I/O assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::size_t kLengthPrefixBytes = 8;
// The reference implementation's limit; a larger length is corruption, not a header.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A real header nests 3 deep; the limit keeps a hostile one from exhausting memory or stack.
constexpr int kMaxHeaderDepth = 16;
constexpr std::size_t kNamesInError = 8;

struct DtypeName {
  std::string_view name;
  at::ScalarType type;
};

constexpr std::array<DtypeName, 15> kDtypes = {{
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U64", at::kUInt64},
    {"U32", at::kUInt32},
    {"U16", at::kUInt16},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
}};

std::optional<at::ScalarType> dtype_from_name(std::string_view name) {
  for (const auto& dtype : kDtypes) {
    if (dtype.name == name) return dtype.type;
  }
  return std::nullopt;
}

std::optional<std::string_view> name_of_dtype(at::ScalarType type) {
  for (const auto& dtype : kDtypes) {
    if (dtype.type == type) return dtype.name;
  }
  return std::nullopt;
}

std::string supported_dtype_names() {
  std::vector<std::string_view> names;
  for (const auto& dtype : kDtypes) {
    names.push_back(dtype.name);
  }
  return fmt::format("{}", fmt::join(names, ", "));
}

/// Raised while parsing the header; the reader adds the file name.
struct HeaderError {
  std::string what;
};

[[noreturn]] void header_error(std::string what) {
  throw HeaderError{std::move(what)};
}

[[noreturn]] void entry_error(const std::string& name, std::string_view what) {
  header_error(fmt::format("tensor '{}': {}", name, what));
}

const Json& field(const std::string& name, const Json& entry, const char* key) {
  const auto it = entry.find(key);
  if (it == entry.end()) entry_error(name, fmt::format("missing field \"{}\"", key));
  return *it;
}

/// A JSON number that is an integer in [0, 2^64).
std::optional<uint64_t> as_unsigned(const Json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  return value.get<uint64_t>();
}

std::vector<int64_t> parse_shape(const std::string& name, const Json& shape) {
  if (!shape.is_array()) {
    entry_error(name, fmt::format("\"shape\" must be an array of integers, found {}", shape.type_name()));
  }
  std::vector<int64_t> dims;
  for (const Json& dim : shape) {
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      entry_error(name, fmt::format("negative dimension {} in \"shape\"", dim.get<int64_t>()));
    }
    const auto size = as_unsigned(dim);
    if (!size) {
      entry_error(name,
                  fmt::format("\"shape\" must be an array of integers, found {} in it", dim.type_name()));
    }
    if (*size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      entry_error(name, fmt::format("dimension {} in \"shape\" is too large", *size));
    }
    dims.push_back(static_cast<int64_t>(*size));
  }
  return dims;
}

/// The byte size of a contiguous tensor. Empty dimensions count as 1 in the overflow check, because
/// LibTorch's contiguous strides multiply them in that way.
uint64_t byte_size(const std::string& name, const std::vector<int64_t>& shape, at::ScalarType dtype) {
  uint64_t strided_bytes = c10::elementSize(dtype);
  uint64_t bytes = strided_bytes;
  for (const int64_t dim : shape) {
    const auto size = static_cast<uint64_t>(dim);
    if (__builtin_mul_overflow(strided_bytes, std::max<uint64_t>(size, 1), &strided_bytes) ||
        strided_bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      entry_error(name, fmt::format("element count overflows: shape [{}]", fmt::join(shape, ", ")));
    }
    bytes *= size;
  }
  return bytes;
}

SafetensorsEntry parse_entry(const std::string& name, const Json& entry, uint64_t data_bytes) {
  if (!entry.is_object()) {
    entry_error(name, fmt::format("entry must be a JSON object, found {}", entry.type_name()));
  }

  const Json& dtype_json = field(name, entry, "dtype");
  if (!dtype_json.is_string()) {
    entry_error(name, fmt::format("\"dtype\" must be a string, found {}", dtype_json.type_name()));
  }
  const auto& dtype_text = dtype_json.get_ref<const std::string&>();
  const auto dtype = dtype_from_name(dtype_text);
  if (!dtype) {
    entry_error(name,
                fmt::format("unknown dtype \"{}\" (supported: {})", dtype_text, supported_dtype_names()));
  }

  std::vector<int64_t> shape = parse_shape(name, field(name, entry, "shape"));

  const Json& offsets = field(name, entry, "data_offsets");
  const auto offsets_error = [&] {
    entry_error(name,
                fmt::format("\"data_offsets\" must be [begin, end], two non-negative integers, found {}",
                            offsets.dump()));
  };
  if (!offsets.is_array() || offsets.size() != 2) offsets_error();
  const auto begin = as_unsigned(offsets[0]);
  const auto end = as_unsigned(offsets[1]);
  if (!begin || !end) offsets_error();
  if (*begin > *end) {
    entry_error(name, fmt::format("data_offsets [{}, {}]: begin is after end", *begin, *end));
  }
  if (*end > data_bytes) {
    entry_error(name,
                fmt::format("data_offsets [{}, {}] end beyond the data buffer of {} bytes (file truncated?)",
                            *begin, *end, data_bytes));
  }

  const uint64_t expected_bytes = byte_size(name, shape, *dtype);
  if (*end - *begin != expected_bytes) {
    entry_error(
        name, fmt::format("size mismatch: data_offsets [{}, {}] hold {} bytes, but {} [{}] needs {}", *begin,
                          *end, *end - *begin, dtype_text, fmt::join(shape, ", "), expected_bytes));
  }
  return {name, *dtype, std::move(shape), *begin, *end};
}

SafetensorsMetadata parse_metadata(const Json& metadata) {
  if (!metadata.is_object()) {
    header_error(
        fmt::format("\"{}\" must be an object of strings, found {}", kMetadataKey, metadata.type_name()));
  }
  SafetensorsMetadata result;
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      header_error(fmt::format("\"{}\" value of \"{}\" must be a string, found {}", kMetadataKey, key,
                               value.type_name()));
    }
    result.emplace(key, value.get<std::string>());
  }
  return result;
}

/// Parses the header, rejecting duplicate keys (which JSON parsers resolve differently) and deep nesting.
Json parse_header_json(std::span<const std::byte> text) {
  std::vector<std::set<std::string>> keys_per_object;
  const Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth > kMaxHeaderDepth) {
      header_error(fmt::format("header nests deeper than {} levels", kMaxHeaderDepth));
    }
    if (event == Json::parse_event_t::object_start) keys_per_object.emplace_back();
    if (event == Json::parse_event_t::object_end) keys_per_object.pop_back();
    if (event == Json::parse_event_t::key &&
        !keys_per_object.back().insert(parsed.get<std::string>()).second) {
      header_error(fmt::format("duplicate key \"{}\" in the header", parsed.get<std::string>()));
    }
    return true;
  };
  // nlohmann's parser takes a NUL byte for the end of the input and would ignore whatever follows it.
  if (const auto nul = std::find(text.begin(), text.end(), std::byte{0}); nul != text.end()) {
    header_error(fmt::format("header is not valid JSON: NUL byte at offset {}", nul - text.begin()));
  }
  const auto* first = reinterpret_cast<const char*>(text.data());
  try {
    return Json::parse(first, first + text.size(), check);
  } catch (const Json::exception& error) {
    header_error(fmt::format("header is not valid JSON: {}", error.what()));
  }
}

void check_no_overlap(const std::vector<SafetensorsEntry>& sorted_entries) {
  const SafetensorsEntry* furthest = nullptr;  // the non-empty entry that reaches furthest so far
  for (const auto& entry : sorted_entries) {
    if (entry.begin == entry.end) continue;
    if (furthest != nullptr && entry.begin < furthest->end) {
      header_error(fmt::format("tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", furthest->name,
                               furthest->begin, furthest->end, entry.name, entry.begin, entry.end));
    }
    if (furthest == nullptr || entry.end > furthest->end) furthest = &entry;
  }
}

}  // namespace

SafetensorsReader::SafetensorsReader(std::filesystem::path path) : file_(std::move(path)) {
  const auto invalid = [&](std::string_view what) {
    return UserError(fmt::format("safetensors file '{}': {}", file_.path().string(), what));
  };
  const std::span<const std::byte> bytes = file_.bytes();
  if (bytes.size() < kLengthPrefixBytes) {
    throw invalid(fmt::format("file is {} bytes, shorter than the 8-byte header length", bytes.size()));
  }
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes.data(), sizeof header_bytes);
  if (header_bytes > kMaxHeaderBytes) {
    throw invalid(
        fmt::format("header length {} exceeds the limit of {} bytes", header_bytes, kMaxHeaderBytes));
  }
  if (header_bytes > bytes.size() - kLengthPrefixBytes) {
    throw invalid(
        fmt::format("header length {} exceeds the {} bytes after the length prefix (file truncated?)",
                    header_bytes, bytes.size() - kLengthPrefixBytes));
  }
  data_ = bytes.subspan(kLengthPrefixBytes + header_bytes);

  try {
    const Json header = parse_header_json(bytes.subspan(kLengthPrefixBytes, header_bytes));
    if (!header.is_object()) {
      header_error(fmt::format("header is not a JSON object, found {}", header.type_name()));
    }
    for (const auto& [key, value] : header.items()) {
      if (key == kMetadataKey) {
        metadata_ = parse_metadata(value);
      } else {
        entries_.push_back(parse_entry(key, value, data_.size()));
      }
    }
    std::sort(entries_.begin(), entries_.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
      return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    check_no_overlap(entries_);
  } catch (const HeaderError& error) {
    throw invalid(error.what);
  }
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    index_.emplace(entries_[i].name, i);
  }
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& entry : entries_) {
    names.push_back(entry.name);
  }
  return names;
}

bool SafetensorsReader::contains(std::string_view name) const {
  return index_.find(name) != index_.end();
}

const SafetensorsEntry& SafetensorsReader::entry(std::string_view name) const {
  const auto it = index_.find(name);
  if (it != index_.end()) return entries_[it->second];
  std::vector<std::string> some_names = names();
  const bool more = some_names.size() > kNamesInError;
  some_names.resize(std::min(some_names.size(), kNamesInError));
  throw UserError(fmt::format("safetensors file '{}' has no tensor '{}'; it holds {} tensors: {}{}",
                              path().string(), name, entries_.size(), fmt::join(some_names, ", "),
                              more ? ", ..." : ""));
}

at::Tensor SafetensorsReader::tensor(std::string_view name) const {
  return read(entry(name));
}

std::map<std::string, at::Tensor> SafetensorsReader::load_all() const {
  std::map<std::string, at::Tensor> tensors;
  for (const auto& entry : entries_) {
    tensors.emplace(entry.name, read(entry));
  }
  return tensors;
}

at::Tensor SafetensorsReader::read(const SafetensorsEntry& entry) const {
  const std::span<const std::byte> bytes = data_.subspan(entry.begin, entry.end - entry.begin);
  if (entry.dtype == at::kBool) {
    // Any byte but 0 and 1 is not a bool LibTorch can compute with.
    const auto bad = std::find_if(bytes.begin(), bytes.end(), [](std::byte b) { return b > std::byte{1}; });
    if (bad != bytes.end()) {
      throw UserError(
          fmt::format("safetensors file '{}': BOOL tensor '{}' holds byte {} at element {}; expected 0 or 1",
                      path().string(), entry.name, std::to_integer<int>(*bad), bad - bytes.begin()));
    }
  }
  at::Tensor tensor = at::empty(entry.shape, at::TensorOptions().dtype(entry.dtype));
  if (!bytes.empty()) std::memcpy(tensor.mutable_data_ptr(), bytes.data(), bytes.size());
  return tensor;
}

void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata) {
  // ordered_json keeps the header in layout order, with the metadata first as the reference writer does.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(name != kMetadataKey, "save_safetensors: '", kMetadataKey,
                "' is reserved, not a tensor name");
    TORCH_CHECK(names.insert(name).second, "save_safetensors: duplicate tensor name '", name, "'");
    TORCH_CHECK(tensor.defined(), "save_safetensors: tensor '", name, "' is undefined");
    TORCH_CHECK(tensor.layout() == at::kStrided, "save_safetensors: tensor '", name,
                "' is not strided (layout ", tensor.layout(), ")");
    const auto dtype = name_of_dtype(tensor.scalar_type());
    TORCH_CHECK(dtype, "save_safetensors: tensor '", name, "' has dtype ", tensor.scalar_type(),
                ", which is not supported");
    const auto bytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    header[name] = {{"dtype", *dtype},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", nlohmann::ordered_json::array({offset, offset + bytes})}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_bytes = header_text.size();

  AtomicFileWriter file(path);
  file.write(std::as_bytes(std::span(&header_bytes, 1)));
  file.write(std::as_bytes(std::span(header_text)));
  // One tensor on the CPU at a time, so saving a GPU model needs no second copy of it in host memory.
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor cpu = tensor.cpu().contiguous();
    file.write({static_cast<const std::byte*>(cpu.const_data_ptr()), cpu.nbytes()});
  }
  file.commit();
}

}  // namespace dla::io
