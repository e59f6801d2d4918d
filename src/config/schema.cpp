// The config engine's non-template parts: scalar codecs, YAML application with sources, YAML and
// Markdown output.
#include "dla/config/schema.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace dla::config {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

const std::string& scalar_or_throw(const YAML::Node& node, const std::string& expected) {
  if (!node.IsScalar()) throw DecodeError("expected " + expected + ", got " + describe_node(node));
  return node.Scalar();
}

// A key path's parent section ("" at the top level) and its last component.
std::pair<std::string, std::string> split_key(std::string_view key) {
  const auto dot = key.rfind('.');
  if (dot == std::string_view::npos) return {"", std::string(key)};
  return {std::string(key.substr(0, dot)), std::string(key.substr(dot + 1))};
}

std::string unknown_key_message(const Schema& schema, const std::string& key) {
  auto [section, name] = split_key(key);
  std::vector<std::string> all;
  for (const auto& f : schema.fields())
    all.push_back(f.key);
  for (const auto& s : schema.sections())
    all.push_back(s.key);
  std::string message = "unknown key '" + key + "'";
  if (auto close = nearest(key, all)) return message + "; did you mean '" + *close + "'?";
  // A key in the wrong section ("lr" at the top level) is still a likely typo for a key elsewhere.
  for (const auto& candidate : all) {
    if (split_key(candidate).second == name) return message + "; did you mean '" + candidate + "'?";
  }
  const auto valid = schema.children(section);
  return message + "; valid keys" + (section.empty() ? "" : " in '" + section + "'") + ": " +
         enum_choices(valid);
}

// `key_source` locates the key (for unknown keys), `source` the value (for wrong values).
void apply_value(const Schema& schema, const std::string& key, const YAML::Node& node,
                 const Source& key_source, const Source& source, SourceMap& sources) {
  const Field* field = schema.find_field(key);
  if (field == nullptr) {
    if (schema.is_section(key)) {
      throw ConfigError(
          source, key,
          "'" + key + "' is a section; expected a mapping of its keys, got " + describe_node(node));
    }
    throw ConfigError(key_source, key, unknown_key_message(schema, key));
  }
  try {
    field->assign(node);
  } catch (const DecodeError& e) {
    throw ConfigError(source, key, e.what());
  }
  sources[key] = source;
}

void apply_mapping(const Schema& schema, const YAML::Node& map, const std::string& prefix,
                   const std::string& file, SourceMap& sources) {
  std::vector<std::string> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const Source source = Source::of(file, it->first);
    if (!it->first.IsScalar()) throw ConfigError(source, prefix, "keys must be plain names");
    const std::string name = it->first.Scalar();
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) {
      throw ConfigError(source, key, "duplicate key '" + key + "'");
    }
    seen.push_back(name);
    if (prefix.empty() && name == "extends") continue;  // handled by apply_file
    if (schema.is_section(key) && it->second.IsMap()) {
      apply_mapping(schema, it->second, key, file, sources);
    } else if (schema.is_section(key) && it->second.IsNull()) {
      continue;  // an empty section keeps its defaults
    } else {
      apply_value(schema, key, it->second, source, Source::of(file, it->second), sources);
    }
  }
}

YAML::Node load_yaml_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UserError("config file '" + path + "' cannot be read: " + std::strerror(errno));
  try {
    return YAML::Load(in);
  } catch (const YAML::Exception& e) {
    throw ConfigError(Source{path, e.mark.line + 1, e.mark.column + 1, ""}, "", "invalid YAML: " + e.msg);
  }
}

void apply_file_recursive(const Schema& schema, const std::string& path, SourceMap& sources,
                          std::vector<std::filesystem::path>& stack) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(path, ec);
  if (std::find(stack.begin(), stack.end(), canonical) != stack.end()) {
    throw UserError("config file '" + path + "' extends itself (through 'extends:')");
  }
  if (!fs::is_regular_file(path)) throw UserError("config file '" + path + "' does not exist");
  const YAML::Node root = load_yaml_file(path);
  if (root.IsNull()) return;  // an empty file changes nothing
  if (!root.IsMap()) {
    throw ConfigError(Source::of(path, root), "",
                      "expected a mapping of sections at the top level, got " + describe_node(root));
  }
  stack.push_back(canonical);
  if (const YAML::Node parents = root["extends"]) {
    std::vector<std::string> files;
    try {
      files = parents.IsSequence() ? Codec<std::vector<std::string>>::decode(parents)
                                   : std::vector<std::string>{Codec<std::string>::decode(parents)};
    } catch (const DecodeError& e) {
      throw ConfigError(Source::of(path, parents), "extends", e.what());
    }
    for (const auto& parent : files) {
      const fs::path resolved =
          fs::path(parent).is_absolute() ? fs::path(parent) : fs::path(path).parent_path() / parent;
      if (!fs::is_regular_file(resolved)) {
        throw ConfigError(Source::of(path, parents), "extends",
                          "extended config file '" + resolved.string() + "' does not exist");
      }
      apply_file_recursive(schema, resolved.lexically_normal().string(), sources, stack);
    }
  }
  apply_mapping(schema, root, "", path, sources);
  stack.pop_back();
}

}  // namespace

std::string Source::describe() const {
  if (file == "--set") return "--set " + text;
  if (line <= 0) return file;
  return fmt::format("{}:{}:{}", file, line, column);
}

Source Source::of(const std::string& file, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return Source{file, mark.line >= 0 ? mark.line + 1 : 0, mark.column >= 0 ? mark.column + 1 : 0, ""};
}

ConfigError::ConfigError(const std::string& key, const std::string& message)
    : UserError(key.empty() || message.find(key) != std::string::npos ? message : key + ": " + message),
      key_(key) {}

ConfigError::ConfigError(const Source& source, const std::string& key, const std::string& message)
    : UserError(source.describe() + ": " +
                (key.empty() || message.find(key) != std::string::npos ? message : key + ": " + message)),
      key_(key) {}

bool Bounds::contains(double x) const {
  if (min && (min_exclusive ? !(x > *min) : !(x >= *min))) return false;
  if (max && !(x <= *max)) return false;
  return true;
}

std::string Bounds::describe() const {
  if (min && max) return fmt::format("in [{}, {}]", *min, *max);
  if (min) return fmt::format("{} {}", min_exclusive ? ">" : ">=", *min);
  if (max) return fmt::format("<= {}", *max);
  return "";
}

std::string describe_node(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return "'" + node.Scalar() + "'";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "no value";
  }
}

std::string enum_choices(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i)
    out += (i ? ", " : "") + names[i];
  return out;
}

std::optional<std::string> nearest(std::string_view word, const std::vector<std::string>& names) {
  std::optional<std::string> best;
  std::size_t best_distance = 0;
  for (const auto& name : names) {
    const std::size_t d = edit_distance(lower(std::string(word)), lower(name));
    if (!best || d < best_distance) {
      best = name;
      best_distance = d;
    }
  }
  const std::size_t allowed = std::max<std::size_t>(2, word.size() / 3);
  if (best && best_distance <= allowed && best_distance < word.size()) return best;
  return std::nullopt;
}

bool Codec<bool>::decode(const YAML::Node& node) {
  const std::string text = lower(scalar_or_throw(node, "true or false"));
  if (text == "true" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "no" || text == "off") return false;
  throw DecodeError("expected true or false, got " + describe_node(node));
}

int64_t Codec<int64_t>::decode(const YAML::Node& node) {
  std::string text = scalar_or_throw(node, "an integer");
  std::erase(text, '_');  // 1_000_000, as YAML 1.1 allows
  int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec == std::errc() && ptr == end && !text.empty()) return value;
  // Integers written in scientific notation (2e9 tokens) are welcome when they are whole numbers.
  double real = 0;
  auto [rptr, rec] = std::from_chars(text.data(), end, real);
  if (rec == std::errc() && rptr == end && std::isfinite(real) && real == std::floor(real) &&
      std::fabs(real) < 9.2e18) {
    return static_cast<int64_t>(real);
  }
  throw DecodeError("expected an integer, got " + describe_node(node));
}

double Codec<double>::decode(const YAML::Node& node) {
  std::string text = scalar_or_throw(node, "a number");
  std::erase(text, '_');
  double value = 0;
  const char* begin = text.data() + (text.starts_with('+') ? 1 : 0);
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec == std::errc() && ptr == end && begin != end && std::isfinite(value)) return value;
  throw DecodeError("expected a number, got " + describe_node(node));
}

YAML::Node Codec<double>::encode(double value) {
  // Shortest text that reads back to the same double, so a written config round-trips exactly.
  return YAML::Node(fmt::format("{}", value));
}

std::string Codec<std::string>::decode(const YAML::Node& node) {
  if (node.IsNull()) return "";  // `name:` with nothing after it
  return scalar_or_throw(node, "a string");
}

const Field* Schema::find_field(std::string_view key) const {
  for (const auto& f : fields_) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

bool Schema::is_section(std::string_view key) const {
  return std::any_of(sections_.begin(), sections_.end(), [&](const Section& s) { return s.key == key; });
}

std::vector<std::string> Schema::children(std::string_view section) const {
  std::vector<std::string> out;
  auto add = [&](const std::string& key) {
    auto [parent, name] = split_key(key);
    if (parent == section) out.push_back(name);
  };
  for (const auto& s : sections_)
    add(s.key);
  for (const auto& f : fields_)
    add(f.key);
  return out;
}

YAML::Node Schema::to_yaml() const {
  YAML::Node root(YAML::NodeType::Map);
  for (const auto& f : fields_) {
    std::vector<std::string> parts;
    std::stringstream ss(f.key);
    for (std::string part; std::getline(ss, part, '.');)
      parts.push_back(part);
    // yaml-cpp nodes are handles: walking by value down the tree still writes into `root`.
    YAML::Node node = root;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      if (!node[parts[i]]) node[parts[i]] = YAML::Node(YAML::NodeType::Map);
      node.reset(node[parts[i]]);
    }
    node[parts.back()] = f.get();
  }
  return root;
}

std::string Schema::to_yaml_text() const {
  YAML::Emitter out;
  out << to_yaml();
  return std::string(out.c_str()) + "\n";
}

std::string Schema::to_markdown() const {
  std::string out;
  std::string current;
  auto escape = [](std::string text) {
    std::string escaped;
    for (char c : text)
      escaped += (c == '|') ? std::string("\\|") : std::string(1, c);
    return escaped;
  };
  for (const auto& f : fields_) {
    auto [section, name] = split_key(f.key);
    if (section != current || out.empty()) {
      current = section;
      const auto it = std::find_if(sections_.begin(), sections_.end(),
                                   [&](const Section& s) { return s.key == section; });
      out += fmt::format("\n## `{}`\n\n", section.empty() ? "(top level)" : section);
      if (it != sections_.end() && !it->doc.empty()) out += it->doc + "\n\n";
      out += "| key | type | default | meaning |\n| --- | --- | --- | --- |\n";
    }
    std::string type = f.type + (f.bounds.empty() ? "" : ", " + f.bounds);
    out += fmt::format("| `{}` | {} | `{}` | {} |\n", f.key, escape(type), escape(f.default_text),
                       escape(f.doc));
  }
  return out;
}

std::string SchemaBuilder::join_key(std::string_view name) const {
  std::string key;
  for (const auto& p : prefix_)
    key += p + ".";
  return key + std::string(name);
}

void apply_node(const Schema& schema, const YAML::Node& root, const std::string& file, SourceMap& sources) {
  if (root.IsNull()) return;
  if (!root.IsMap()) {
    throw ConfigError(Source::of(file, root), "",
                      "expected a mapping of sections, got " + describe_node(root));
  }
  apply_mapping(schema, root, "", file, sources);
}

void apply_file(const Schema& schema, const std::string& path, SourceMap& sources) {
  std::vector<std::filesystem::path> stack;
  apply_file_recursive(schema, path, sources, stack);
}

void apply_override(const Schema& schema, const std::string& assignment, SourceMap& sources) {
  const Source source{"--set", 0, 0, assignment};
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError(source, "", "expected KEY=VALUE, e.g. --set optim.lr=3e-4");
  }
  const std::string key = assignment.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw ConfigError(source, key, "the value is not valid YAML: " + e.msg);
  }
  apply_value(schema, key, value, source, source, sources);
}

}  // namespace dla::config
