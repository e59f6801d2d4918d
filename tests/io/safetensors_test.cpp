// Tests of the safetensors reader and writer: round trips, the reference fixtures, and corrupted files,
// which must be rejected with dla::UserError or read back exactly.
#include "dla/io/safetensors.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <ATen/ops/arange.h>
#include <ATen/ops/randint.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "dla/util/error.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using dla::io::NamedTensors;
using dla::io::SafetensorsReader;
using dla::test::has_substr;
using Json = nlohmann::json;

struct DtypeCase {
  std::string name;
  at::ScalarType type;
};

const std::vector<DtypeCase> kDtypeCases = {
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
};

/// Random bit patterns of `dtype` (NaNs and infinities included); bools are 0 or 1.
at::Tensor random_tensor(at::ScalarType dtype, at::IntArrayRef shape) {
  if (dtype == at::kBool) return at::randint(0, 2, shape, at::kByte).to(at::kBool);
  const int64_t numel = c10::multiply_integers(shape);
  const auto bytes = static_cast<int64_t>(c10::elementSize(dtype)) * numel;
  return at::randint(0, 256, {bytes}, at::kByte).view(dtype).reshape(shape);
}

bool same_bytes(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.scalar_type() != expected.scalar_type() || actual.sizes() != expected.sizes()) return false;
  const at::Tensor a = actual.contiguous();
  const at::Tensor b = expected.contiguous();
  return a.nbytes() == 0 || std::memcmp(a.const_data_ptr(), b.const_data_ptr(), a.nbytes()) == 0;
}

/// A file from a literal header and `data_bytes` bytes of data (0, 1, 2, ...).
std::string raw_file(const std::string& header, std::size_t data_bytes) {
  std::string file(8, '\0');
  uint64_t length = header.size();
  std::memcpy(file.data(), &length, sizeof length);
  file += header;
  for (std::size_t i = 0; i < data_bytes; ++i) {
    file += static_cast<char>(i);
  }
  return file;
}

uint64_t header_length(const std::string& file) {
  uint64_t length = 0;
  std::memcpy(&length, file.data(), sizeof length);
  return length;
}

/// "" when `dir` holds fixtures, else what is wrong, so that REQUIRE shows it.
std::string fixture_dir_problem(const fs::path& dir) {
  if (fs::is_directory(dir)) return "";
  return fmt::format(
      "fixtures folder '{}' does not exist; set DLA_FIXTURES to the folder holding fla/ and dla/",
      dir.string());
}

}  // namespace

TEST_CASE("safetensors round-trips every dtype bit-exactly", "[safetensors][io]") {
  const dla::test::TempDir dir;
  for (const auto& dtype : kDtypeCases) {
    SECTION(dtype.name) {
      const auto path = dir / (dtype.name + ".safetensors");
      const NamedTensors tensors = {{"matrix", random_tensor(dtype.type, {3, 5})},
                                    {"scalar", random_tensor(dtype.type, {})},
                                    {"empty", random_tensor(dtype.type, {0, 4})},
                                    {"vector", random_tensor(dtype.type, {7})}};
      dla::io::save_safetensors(path, tensors);

      const SafetensorsReader reader(path);
      REQUIRE(reader.names() == std::vector<std::string>{"matrix", "scalar", "empty", "vector"});
      REQUIRE(reader.metadata().empty());
      for (const auto& [name, tensor] : tensors) {
        REQUIRE(reader.entry(name).dtype == dtype.type);
        REQUIRE(reader.entry(name).shape == tensor.sizes().vec());
        REQUIRE(same_bytes(reader.tensor(name), tensor));
      }
      const auto all = reader.load_all();
      REQUIRE(all.size() == tensors.size());
      for (const auto& [name, tensor] : tensors) {
        REQUIRE(same_bytes(all.at(name), tensor));
      }

      const std::string file = dla::test::read_text(path);
      const Json header = Json::parse(file.substr(8, header_length(file)));
      REQUIRE(header.at("matrix").at("dtype") == dtype.name);
      REQUIRE(header.at("scalar").at("shape") == Json::array());
    }
  }
}

TEST_CASE("safetensors writes a padded compact header with tensors in the given order", "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto path = dir / "layout.safetensors";
  const dla::io::SafetensorsMetadata metadata = {
      {"format", "pt"}, {"note", "spaces, commas: kept"}, {"empty", ""}, {"unicode", "\xce\xbb=0.5"}};
  dla::io::save_safetensors(path, {{"zeta", at::arange(3, at::kFloat)}, {"alpha", at::arange(5, at::kLong)}},
                            metadata);

  const std::string file = dla::test::read_text(path);
  const uint64_t length = header_length(file);
  REQUIRE(length % 8 == 0);
  const std::string header_text = file.substr(8, length);
  const auto json_end = header_text.find_last_not_of(' ') + 1;
  REQUIRE(length - json_end < 8);
  const Json header = Json::parse(header_text);
  REQUIRE(
      header_text.substr(0, json_end) ==
      nlohmann::ordered_json::parse(header_text).dump());  // compact: as nlohmann dumps it, no indentation
  REQUIRE(header.at("zeta").at("data_offsets") == Json::array({0, 12}));
  REQUIRE(header.at("alpha").at("data_offsets") == Json::array({12, 52}));
  REQUIRE(file.size() == 8 + length + 52);

  const SafetensorsReader reader(path);
  REQUIRE(reader.metadata() == metadata);
  REQUIRE(reader.names() == std::vector<std::string>{"zeta", "alpha"});
}

TEST_CASE("safetensors writes no __metadata__ when there is none, and reads an empty file",
          "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto path = dir / "none.safetensors";
  dla::io::save_safetensors(path, {});
  const std::string file = dla::test::read_text(path);
  REQUIRE(Json::parse(file.substr(8)) == Json::object());
  const SafetensorsReader reader(path);
  REQUIRE(reader.entries().empty());
  REQUIRE(reader.load_all().empty());
}

TEST_CASE("safetensors saves non-contiguous tensors by value", "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto path = dir / "strided.safetensors";
  const at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  const NamedTensors tensors = {{"transposed", base.t()},
                                {"every_other_column", base.slice(1, 0, 6, 2)},
                                {"broadcast_row", base[1].expand({3, 6})}};
  dla::io::save_safetensors(path, tensors);
  const SafetensorsReader reader(path);
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor loaded = reader.tensor(name);
    REQUIRE(loaded.is_contiguous());
    REQUIRE(loaded.sizes() == tensor.sizes());
    REQUIRE(loaded.equal(tensor));
  }
}

TEST_CASE("safetensors reads gaps, trailing bytes and empty tensors sharing an offset", "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto path = dir / "gaps.safetensors";
  dla::test::write_text(path, raw_file(R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                                       R"("e2":{"dtype":"F32","shape":[0],"data_offsets":[5,5]},)"
                                       R"("e1":{"dtype":"F32","shape":[3,0],"data_offsets":[5,5]},)"
                                       R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                                       10));
  const SafetensorsReader reader(path);
  REQUIRE(reader.names() == std::vector<std::string>{"a", "b", "e1", "e2"});
  REQUIRE(reader.tensor("b")[1].item<uint8_t>() == 5);
  REQUIRE(reader.tensor("e1").sizes() == at::IntArrayRef{3, 0});
}

TEST_CASE("save_safetensors rejects duplicate, reserved and unsupported tensors", "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto path = dir / "rejected.safetensors";
  const at::Tensor t = at::arange(4, at::kFloat);
  REQUIRE_THROWS_WITH(dla::io::save_safetensors(path, {{"a", t}, {"a", t}}),
                      has_substr("duplicate tensor name 'a'"));
  REQUIRE_THROWS_WITH(dla::io::save_safetensors(path, {{"__metadata__", t}}), has_substr("reserved"));
  REQUIRE_THROWS_AS(dla::io::save_safetensors(path, {{"c", t.to(at::kComplexFloat)}}), c10::Error);
  REQUIRE_THROWS_AS(dla::io::save_safetensors(path, {{"u", at::Tensor()}}), c10::Error);
  REQUIRE(!fs::exists(path));
  REQUIRE_THROWS_WITH(dla::io::save_safetensors(dir / "missing" / "x.safetensors", {{"a", t}}),
                      has_substr((dir / "missing" / "x.safetensors").string()));
}

TEST_CASE("safetensors reads every reference fixture exactly", "[safetensors][io][fixtures]") {
  const fs::path root = dla::test::fixtures_root();
  for (const std::string subfolder : {"fla", "dla"}) {
    const fs::path folder = root / subfolder;
    REQUIRE(fixture_dir_problem(folder) == "");
    std::vector<fs::path> files;
    for (const auto& item : fs::directory_iterator(folder)) {
      if (item.path().extension() == ".safetensors") files.push_back(item.path());
    }
    REQUIRE(!files.empty());
    std::sort(files.begin(), files.end());
    for (const auto& path : files) {
      const std::string file = dla::test::read_text(path);
      const uint64_t length = header_length(file);
      const Json header = Json::parse(file.substr(8, length));
      const std::string data = file.substr(8 + length);

      const SafetensorsReader reader(path);
      std::size_t tensor_count = 0;
      for (const auto& [name, expected] : header.items()) {
        if (name == "__metadata__") continue;
        ++tensor_count;
        const auto begin = expected.at("data_offsets").at(0).get<std::size_t>();
        const auto end = expected.at("data_offsets").at(1).get<std::size_t>();
        const auto shape = expected.at("shape").get<std::vector<int64_t>>();
        REQUIRE(expected.at("dtype") == "F32");
        REQUIRE(reader.entry(name).shape == shape);
        const at::Tensor tensor = reader.tensor(name);
        REQUIRE(tensor.scalar_type() == at::kFloat);
        REQUIRE(tensor.sizes().vec() == shape);
        REQUIRE(tensor.nbytes() == end - begin);
        REQUIRE(std::memcmp(tensor.const_data_ptr(), data.data() + begin, end - begin) == 0);
      }
      REQUIRE(reader.entries().size() == tensor_count);
      REQUIRE(reader.load_all().size() == tensor_count);

      const auto expected_metadata = header.contains("__metadata__")
                                         ? header.at("__metadata__").get<dla::io::SafetensorsMetadata>()
                                         : dla::io::SafetensorsMetadata{};
      REQUIRE(reader.metadata() == expected_metadata);
      for (const auto& [key, value] : reader.metadata()) {
        CHECK(Json::accept(value));
      }
    }
  }
}

TEST_CASE("safetensors rejects malformed files with a message naming the fault", "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto path = dir / "bad.safetensors";
  const auto rejects = [&](const std::string& file, const std::string& words) {
    dla::test::write_text(path, file);
    REQUIRE_THROWS_AS(SafetensorsReader(path), dla::UserError);
    REQUIRE_THROWS_WITH(SafetensorsReader(path), has_substr(path.string()) && has_substr(words));
  };
  const auto rejects_header = [&](const std::string& header, const std::string& words) {
    rejects(raw_file(header, 24), words);
  };

  SECTION("short file") {
    rejects("", "file is 0 bytes, shorter than the 8-byte header length");
    rejects("abcde", "file is 5 bytes, shorter than the 8-byte header length");
  }
  SECTION("header length") {
    std::string huge = raw_file("{}", 0);
    huge[5] = 1;  // 2^40
    rejects(huge, "exceeds the limit of 100000000 bytes");
    std::string long_header = raw_file("{}", 0);
    long_header[0] = 100;
    rejects(long_header, "header length 100 exceeds the 2 bytes after the length prefix");
  }
  SECTION("header JSON") {
    rejects_header(R"({"a": )", "header is not valid JSON");
    rejects_header(std::string("{}\0", 3), "header is not valid JSON");
    rejects_header("[1, 2]", "header is not a JSON object, found array");
    rejects_header("\"text\"", "header is not a JSON object, found string");
    rejects_header(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],)"
                   R"("data_offsets":[1,2]}})",
                   "duplicate key \"a\"");
    rejects_header(R"({"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})",
                   "duplicate key \"dtype\"");
    rejects_header(R"({"__metadata__":{"k":)" + std::string(100, '[') + std::string(100, ']') + "}}",
                   "header nests deeper than");
  }
  SECTION("entry fields") {
    rejects_header(R"({"a":5})", "tensor 'a': entry must be a JSON object, found number");
    rejects_header(R"({"a":{"shape":[6],"data_offsets":[0,24]}})", "tensor 'a': missing field \"dtype\"");
    rejects_header(R"({"a":{"dtype":"F32","data_offsets":[0,24]}})", "tensor 'a': missing field \"shape\"");
    rejects_header(R"({"a":{"dtype":"F32","shape":[6]}})", "tensor 'a': missing field \"data_offsets\"");
    rejects_header(R"({"a":{"dtype":32,"shape":[6],"data_offsets":[0,24]}})",
                   "\"dtype\" must be a string, found number");
    rejects_header(R"({"a":{"dtype":"F32","shape":"6","data_offsets":[0,24]}})",
                   "\"shape\" must be an array of integers, found string");
    rejects_header(R"({"a":{"dtype":"F32","shape":[6.0],"data_offsets":[0,24]}})",
                   "\"shape\" must be an array of integers, found number in it");
    rejects_header(R"({"a":{"dtype":"F32","shape":[null],"data_offsets":[0,24]}})",
                   "\"shape\" must be an array of integers, found null in it");
    for (const std::string offsets : {"[0]", "[0,24,24]", "[0,-24]", "[0.0,24]", "\"0-24\"", "{}"}) {
      rejects_header(R"({"a":{"dtype":"F32","shape":[6],"data_offsets":)" + offsets + "}}",
                     "\"data_offsets\" must be [begin, end]");
    }
  }
  SECTION("dtype and shape") {
    rejects_header(R"({"a":{"dtype":"F31","shape":[6],"data_offsets":[0,24]}})", "unknown dtype \"F31\"");
    rejects_header(R"({"a":{"dtype":"f32","shape":[6],"data_offsets":[0,24]}})", "unknown dtype \"f32\"");
    rejects_header(R"({"a":{"dtype":"F32","shape":[-2,-3],"data_offsets":[0,24]}})", "negative dimension -2");
    rejects_header(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,24]}})",
                   "dimension 18446744073709551615 in \"shape\" is too large");
    rejects_header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,24]}})",
                   "element count overflows");
    rejects_header(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})",
                   "element count overflows");
  }
  SECTION("offsets") {
    rejects_header(R"({"a":{"dtype":"F32","shape":[6],"data_offsets":[24,0]}})", "begin is after end");
    rejects_header(R"({"a":{"dtype":"F32","shape":[12],"data_offsets":[0,48]}})",
                   "data_offsets [0, 48] end beyond the data buffer of 24 bytes");
    rejects_header(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}})",
                   "size mismatch: data_offsets [0, 24] hold 24 bytes, but F32 [2, 2] needs 16");
    rejects_header(R"({"a":{"dtype":"F64","shape":[],"data_offsets":[0,4]}})", "size mismatch");
    rejects_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                   R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                   "tensors 'a' [0, 16] and 'b' [8, 24] overlap");
    rejects_header(R"({"a":{"dtype":"U8","shape":[24],"data_offsets":[0,24]},)"
                   R"("b":{"dtype":"U8","shape":[2],"data_offsets":[20,22]}})",
                   "tensors 'a' [0, 24] and 'b' [20, 22] overlap");
  }
  SECTION("metadata") {
    rejects_header(R"({"__metadata__":[1]})", "\"__metadata__\" must be an object of strings, found array");
    rejects_header(R"({"__metadata__":{"k":1}})",
                   "\"__metadata__\" value of \"k\" must be a string, found number");
    rejects_header(R"({"__metadata__":{"k":{"nested":"x"}}})",
                   "value of \"k\" must be a string, found object");
  }
}

TEST_CASE("safetensors reports unknown names, invalid bools and unreadable paths", "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto path = dir / "names.safetensors";
  NamedTensors tensors;
  for (int i = 0; i < 12; ++i) {
    tensors.emplace_back(fmt::format("t{:02}", i), at::arange(2, at::kFloat));
  }
  dla::io::save_safetensors(path, tensors);
  const SafetensorsReader reader(path);
  REQUIRE(!reader.contains("missing"));
  REQUIRE_THROWS_AS(reader.tensor("missing"), dla::UserError);
  REQUIRE_THROWS_WITH(reader.tensor("missing"),
                      has_substr(path.string()) &&
                          has_substr("has no tensor 'missing'; it holds 12 tensors: t00, t01") &&
                          has_substr("t07, ..."));

  const auto bools = dir / "bools.safetensors";
  dla::test::write_text(bools, raw_file(R"({"flags":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})", 4));
  const SafetensorsReader bool_reader(bools);
  REQUIRE_THROWS_WITH(bool_reader.tensor("flags"),
                      has_substr("BOOL tensor 'flags' holds byte 2 at element 2"));

  REQUIRE_THROWS_WITH(
      SafetensorsReader(dir / "absent.safetensors"),
      has_substr((dir / "absent.safetensors").string()) && has_substr("No such file or directory"));
  REQUIRE_THROWS_WITH(SafetensorsReader(dir.path()),
                      has_substr(dir.path().string()) && has_substr("not a regular file"));
}

TEST_CASE("safetensors rejects every truncation of a file", "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto original_path = dir / "whole.safetensors";
  dla::io::save_safetensors(
      original_path, {{"a", at::arange(6, at::kFloat).reshape({2, 3})}, {"b", at::arange(4, at::kInt)}},
      {{"k", "v"}});
  const std::string whole = dla::test::read_text(original_path);
  const std::size_t data_start = 8 + header_length(whole);
  REQUIRE(whole.size() == data_start + 40);

  const auto path = dir / "cut.safetensors";
  std::vector<std::size_t> cuts;
  for (std::size_t cut = 0; cut <= data_start; ++cut) {
    cuts.push_back(cut);
  }
  for (const std::size_t data_cut : {1, 23, 24, 25, 39}) {
    cuts.push_back(data_start + data_cut);
  }
  for (const std::size_t cut : cuts) {
    dla::test::write_text(path, whole.substr(0, cut));
    const char* expected = cut < 8            ? "shorter than the 8-byte header length"
                           : cut < data_start ? "exceeds the"
                                              : "end beyond the data buffer";
    REQUIRE_THROWS_WITH(SafetensorsReader(path), has_substr(expected));
  }
  dla::test::write_text(path, whole);
  REQUIRE(SafetensorsReader(path).load_all().size() == 2);
}

TEST_CASE("safetensors with any header bit flipped loads the same tensors or throws UserError",
          "[safetensors][io]") {
  const dla::test::TempDir dir;
  const auto original_path = dir / "whole.safetensors";
  const NamedTensors tensors = {{"a", at::arange(6, at::kFloat).reshape({2, 3})},
                                {"b", at::arange(4, at::kInt)},
                                {"c", at::arange(3, at::kByte)},
                                {"d", at::arange(2, at::kBFloat16)}};
  dla::io::save_safetensors(original_path, tensors, {{"key", "value"}});
  const std::string whole = dla::test::read_text(original_path);
  const std::size_t data_start = 8 + header_length(whole);
  const SafetensorsReader original(original_path);

  const auto path = dir / "flipped.safetensors";
  int loaded = 0;
  int rejected = 0;
  for (std::size_t position = 0; position < data_start; ++position) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string flipped = whole;
      flipped[position] = static_cast<char>(flipped[position] ^ (1 << bit));
      dla::test::write_text(path, flipped);
      try {
        const SafetensorsReader reader(path);
        const auto all = reader.load_all();
        REQUIRE(all.size() == tensors.size());
        int renamed = 0;
        for (const auto& entry : reader.entries()) {
          // A flipped name still denotes the original tensor at the same offsets.
          const auto same_range = std::find_if(original.entries().begin(), original.entries().end(),
                                               [&](const auto& o) { return o.begin == entry.begin; });
          REQUIRE(same_range != original.entries().end());
          renamed += same_range->name != entry.name;
          REQUIRE(same_bytes(all.at(entry.name), original.tensor(same_range->name)));
        }
        REQUIRE(renamed <= 1);
        ++loaded;
      } catch (const dla::UserError&) {
        ++rejected;
      } catch (const std::exception& error) {
        REQUIRE(fmt::format("byte {} bit {}: unexpected {}", position, bit, error.what()) == "");
      }
    }
  }
  REQUIRE(loaded > 0);
  REQUIRE(rejected > 0);
}
