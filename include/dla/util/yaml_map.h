// Reading YAML files that describe runs (evaluation and benchmark suites) into typed fields: the YAML as
// JSON values, and a reader that names the file and key of every wrong type or unknown key.
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "dla/util/error.h"

namespace dla::util {

/// The YAML file as JSON values (unquoted scalars become numbers and booleans where they read as such).
/// `what` names the kind of file in the errors: "'<what>' <file> does not exist", "<file>:<line>: not valid
/// YAML".
nlohmann::json load_yaml(const std::filesystem::path& file, std::string_view what);

/// Reads the keys of one map into fields; finish() refuses keys that were not read.
class KeyReader {
 public:
  /// `where` names the map in errors ("suite.yaml: tasks[2]").
  KeyReader(const nlohmann::json& map, std::string where) : map_(map), where_(std::move(where)) {
    if (!map_.is_object()) throw UserError(fmt::format("{}: a map of keys is expected", where_));
  }

  /// value = map[key] when the key is there; a list of texts also takes a single value.
  template <class T>
  void read(const std::string& key, T& value) {
    seen_.insert(key);
    if (!map_.contains(key)) return;
    const auto& node = map_.at(key);
    try {
      if constexpr (std::is_same_v<T, std::vector<std::string>>) {
        value.clear();
        if (node.is_array()) {
          for (const auto& item : node)
            value.push_back(item.is_string() ? item.get<std::string>() : item.dump());
        } else {
          value.push_back(node.is_string() ? node.get<std::string>() : node.dump());
        }
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (node.is_object() || node.is_array()) throw std::invalid_argument("a text value");
        value = node.is_string() ? node.get<std::string>() : node.dump();
      } else if constexpr (std::is_same_v<T, nlohmann::json>) {
        value = node;
      } else {
        value = node.get<T>();
      }
    } catch (const std::exception&) {
      throw UserError(fmt::format("{}: key '{}' has the wrong type (found {})", where_, key, node.dump()));
    }
  }

  void finish() const {
    for (const auto& item : map_.items()) {
      if (seen_.count(item.key()) == 0) {
        throw UserError(
            fmt::format("{}: unknown key '{}'; known keys: {}", where_, item.key(), fmt::join(seen_, ", ")));
      }
    }
  }

 private:
  const nlohmann::json& map_;
  std::string where_;
  std::set<std::string> seen_;
};

}  // namespace dla::util
