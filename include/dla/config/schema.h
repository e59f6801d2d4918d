// The config engine. Each config struct describes its fields once, in a `visit(V&)` member; from that
// one description the engine reads YAML (keeping file and line for every value), applies `--set key=value`
// overrides, writes the resolved config back as YAML and documents every key as Markdown.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "dla/util/error.h"

namespace dla::config {

/// Where a value came from: a YAML file position, or a command-line override.
struct Source {
  std::string file;  ///< the file's path, or "--set" for a command-line override
  int line = 0;      ///< 1-based; 0 when unknown
  int column = 0;    ///< 1-based; 0 when unknown
  std::string text;  ///< for overrides: the whole `key=value` argument

  /// "configs/run.yaml:12:5" or "--set optim.lr=abc".
  std::string describe() const;
  static Source of(const std::string& file, const YAML::Node& node);
};

/// A config value that is wrong. `what()` is the full message, prefixed with where the value came from.
class ConfigError : public UserError {
 public:
  ConfigError(const std::string& key, const std::string& message);
  ConfigError(const Source& source, const std::string& key, const std::string& message);

  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

/// Allowed range of a numeric field.
struct Bounds {
  std::optional<double> min;
  std::optional<double> max;
  bool min_exclusive = false;

  static Bounds positive() { return {0.0, std::nullopt, true}; }
  static Bounds at_least(double lo) { return {lo, std::nullopt, false}; }
  static Bounds between(double lo, double hi) { return {lo, hi, false}; }

  bool contains(double x) const;
  /// "> 0", ">= 1", "in [0, 1]"; empty when unbounded.
  std::string describe() const;
};

/// Names of an enum's values, in the order of the values 0, 1, 2, ... Specialise it next to each enum
/// used in a config: `template <> struct EnumNames<Mixer> { static constexpr std::array names{...}; };`
template <class E>
struct EnumNames;

template <class E>
concept ConfigEnum = std::is_enum_v<E> && requires {
  EnumNames<E>::names;
};

template <ConfigEnum E>
std::string_view enum_name(E value) {
  return EnumNames<E>::names.at(static_cast<std::size_t>(value));
}

/// Encoding of one field type to and from YAML.
template <class T>
struct Codec;

template <>
struct Codec<bool> {
  static std::string type_name() { return "bool"; }
  static bool decode(const YAML::Node& node);
  static YAML::Node encode(bool value) { return YAML::Node(value); }
};
template <>
struct Codec<int64_t> {
  static std::string type_name() { return "int"; }
  static int64_t decode(const YAML::Node& node);
  static YAML::Node encode(int64_t value) { return YAML::Node(value); }
};
template <>
struct Codec<double> {
  static std::string type_name() { return "float"; }
  static double decode(const YAML::Node& node);
  static YAML::Node encode(double value);
};
template <>
struct Codec<std::string> {
  static std::string type_name() { return "string"; }
  static std::string decode(const YAML::Node& node);
  static YAML::Node encode(const std::string& value) { return YAML::Node(value); }
};
template <class T>
struct Codec<std::vector<T>> {
  static std::string type_name() { return "list of " + Codec<T>::type_name(); }
  static std::vector<T> decode(const YAML::Node& node);
  static YAML::Node encode(const std::vector<T>& value);
};

/// Decoding errors inside a codec; the engine adds the key and the source.
class DecodeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Shows a scalar for an error message: `"abc"`, or "a list"/"a mapping"/"nothing".
std::string describe_node(const YAML::Node& node);

std::string enum_choices(const std::vector<std::string>& names);
/// The entry of `names` closest to `word` by edit distance, when it is close enough to be a likely typo.
std::optional<std::string> nearest(std::string_view word, const std::vector<std::string>& names);

template <ConfigEnum E>
struct Codec<E> {
  static std::vector<std::string> names() { return {EnumNames<E>::names.begin(), EnumNames<E>::names.end()}; }
  static std::string type_name() { return "one of " + enum_choices(names()); }
  static E decode(const YAML::Node& node) {
    const auto all = names();
    if (node.IsScalar()) {
      for (std::size_t i = 0; i < all.size(); ++i) {
        if (node.Scalar() == all[i]) return static_cast<E>(i);
      }
    }
    std::string message = "expected " + type_name() + ", got " + describe_node(node);
    if (node.IsScalar()) {
      if (auto close = nearest(node.Scalar(), all)) message += "; did you mean '" + *close + "'?";
    }
    throw DecodeError(message);
  }
  static YAML::Node encode(E value) { return YAML::Node(std::string(enum_name(value))); }
};

template <class T>
std::vector<T> Codec<std::vector<T>>::decode(const YAML::Node& node) {
  if (!node.IsSequence()) throw DecodeError("expected " + type_name() + ", got " + describe_node(node));
  std::vector<T> out;
  for (const auto& item : node)
    out.push_back(Codec<T>::decode(item));
  return out;
}
template <class T>
YAML::Node Codec<std::vector<T>>::encode(const std::vector<T>& value) {
  YAML::Node node(YAML::NodeType::Sequence);
  for (const auto& item : value)
    node.push_back(Codec<T>::encode(item));
  node.SetStyle(YAML::EmitterStyle::Flow);
  return node;
}

/// One key of the config tree, bound to a member of a live config object.
struct Field {
  std::string key;           ///< full dotted path, e.g. "optim.lr"
  std::string type;          ///< for people: "int", "float", "one of a, b"
  std::string doc;           ///< one line
  std::string bounds;        ///< "> 0" etc., empty when unbounded
  std::string default_text;  ///< the value when the schema was built (defaults, for a fresh object)
  std::function<void(const YAML::Node&)> assign;  ///< throws DecodeError
  std::function<YAML::Node()> get;
};

struct Section {
  std::string key;  ///< dotted path of the section
  std::string doc;
};

/// The flat list of a config tree's fields, in declaration order, bound to one object.
class Schema {
 public:
  template <class Root>
  static Schema of(Root& root);

  const std::vector<Field>& fields() const { return fields_; }
  const std::vector<Section>& sections() const { return sections_; }
  const Field* find_field(std::string_view key) const;
  bool is_section(std::string_view key) const;
  /// All field and section keys directly under `section` ("" for the top level).
  std::vector<std::string> children(std::string_view section) const;

  /// The resolved config as nested YAML mappings.
  YAML::Node to_yaml() const;
  std::string to_yaml_text() const;
  /// Every key as Markdown tables, one per section: key, type, default, meaning.
  std::string to_markdown() const;

 private:
  friend class SchemaBuilder;
  std::vector<Field> fields_;
  std::vector<Section> sections_;
};

/// The visitor that config structs' `visit()` is called with to build a Schema.
class SchemaBuilder {
 public:
  explicit SchemaBuilder(Schema& schema) : schema_(schema) {}

  template <class T>
  void field(std::string_view name, T& value, std::string_view doc, Bounds bounds = {}) {
    Field f;
    f.key = join_key(name);
    f.type = Codec<T>::type_name();
    f.doc = doc;
    f.bounds = bounds.describe();
    f.default_text = YAML::Dump(Codec<T>::encode(value));
    f.assign = [&value, bounds](const YAML::Node& node) {
      T decoded = Codec<T>::decode(node);
      if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
        if (!bounds.contains(static_cast<double>(decoded))) {
          throw DecodeError("expected a value " + bounds.describe() + ", got " + describe_node(node));
        }
      }
      value = std::move(decoded);
    };
    f.get = [&value] { return Codec<T>::encode(value); };
    schema_.fields_.push_back(std::move(f));
  }

  template <class S>
  void section(std::string_view name, S& sub, std::string_view doc) {
    schema_.sections_.push_back({join_key(name), std::string(doc)});
    prefix_.emplace_back(name);
    sub.visit(*this);
    prefix_.pop_back();
  }

 private:
  std::string join_key(std::string_view name) const;

  Schema& schema_;
  std::vector<std::string> prefix_;
};

template <class Root>
Schema Schema::of(Root& root) {
  Schema schema;
  SchemaBuilder builder(schema);
  root.visit(builder);
  return schema;
}

/// Where each key's value came from; keys never set keep their default and have no entry.
using SourceMap = std::map<std::string, Source>;

/// Applies a YAML file onto the schema's object. A top-level `extends: FILE` (or a list of files),
/// relative to the including file, is applied first. Unknown keys, wrong types, out-of-range values,
/// duplicate keys and invalid YAML throw ConfigError naming the file, line and key.
void apply_file(const Schema& schema, const std::string& path, SourceMap& sources);
/// Applies a parsed YAML mapping (for tests and for files already read).
void apply_node(const Schema& schema, const YAML::Node& root, const std::string& file, SourceMap& sources);
/// Applies one `a.b=value` override; the value is parsed as YAML (`[1, 2]` is a list).
void apply_override(const Schema& schema, const std::string& assignment, SourceMap& sources);

}  // namespace dla::config
