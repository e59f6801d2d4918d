// Reading YAML files into JSON values.
#include "dla/util/yaml_map.h"

#include <yaml-cpp/yaml.h>

namespace dla::util {
namespace {

nlohmann::json to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node)
        out.push_back(to_json(item));
      return out;
    }
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& item : node)
        out[item.first.as<std::string>()] = to_json(item.second);
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string text = node.Scalar();
      if (node.Tag() == "!") return text;  // quoted: always a string
      if (text == "true" || text == "false") return text == "true";
      try {
        size_t used = 0;
        const long long integer = std::stoll(text, &used);
        if (used == text.size()) return integer;
        const double number = std::stod(text, &used);
        if (used == text.size()) return number;
      } catch (const std::exception&) {
      }
      return text;
    }
    default:
      return nullptr;
  }
}

}  // namespace

nlohmann::json load_yaml(const std::filesystem::path& file, std::string_view what) {
  if (!std::filesystem::is_regular_file(file)) {
    throw UserError(fmt::format("{} '{}' does not exist", what, file.string()));
  }
  try {
    return to_json(YAML::LoadFile(file.string()));
  } catch (const YAML::Exception& e) {
    throw UserError(fmt::format("{}:{}: not valid YAML: {}", file.string(), e.mark.line + 1, e.msg));
  }
}

}  // namespace dla::util
