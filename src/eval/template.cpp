// Field paths and templates.
#include "dla/eval/template.h"

#include <charconv>

#include "dla/util/error.h"

namespace dla::eval {
namespace {

// One step of a path: a key, an index, or "[]" (every element).
struct Step {
  std::string key;
  int64_t index = -1;
  bool every = false;
};

std::vector<Step> parse_path(std::string_view path) {
  std::vector<Step> steps;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '.') {
      ++i;
      continue;
    }
    if (path[i] == '[') {
      const auto close = path.find(']', i);
      if (close == std::string_view::npos)
        throw UserError(fmt::format("field path '{}': '[' without ']'", path));
      const std::string_view inside = path.substr(i + 1, close - i - 1);
      Step step;
      if (inside.empty()) {
        step.every = true;
      } else {
        const auto [end, ec] = std::from_chars(inside.data(), inside.data() + inside.size(), step.index);
        if (ec != std::errc() || end != inside.data() + inside.size() || step.index < 0) {
          throw UserError(fmt::format("field path '{}': '[{}]' is not an index", path, inside));
        }
      }
      steps.push_back(step);
      i = close + 1;
      continue;
    }
    const auto end = path.find_first_of(".[", i);
    steps.push_back({std::string(path.substr(i, end == std::string_view::npos ? path.npos : end - i))});
    i = end == std::string_view::npos ? path.size() : end;
  }
  return steps;
}

const nlohmann::json* walk(const nlohmann::json* node, const std::vector<Step>& steps, size_t from,
                           size_t to) {
  for (size_t s = from; s < to && node != nullptr; ++s) {
    const Step& step = steps[s];
    if (!step.key.empty()) {
      node = node->is_object() && node->contains(step.key) ? &node->at(step.key) : nullptr;
    } else if (step.index >= 0) {
      node = node->is_array() && step.index < static_cast<int64_t>(node->size()) ? &node->at(step.index)
                                                                                 : nullptr;
    }
  }
  return node;
}

}  // namespace

std::string as_text(const nlohmann::json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

const nlohmann::json* find_path(const nlohmann::json& doc, std::string_view path) {
  const auto steps = parse_path(path);
  for (const auto& step : steps)
    if (step.every)
      throw UserError(fmt::format("field path '{}': '[]' is only allowed in list fields", path));
  return walk(&doc, steps, 0, steps.size());
}

std::vector<std::string> values_at(const nlohmann::json& doc, std::string_view path) {
  const auto steps = parse_path(path);
  const auto every = std::find_if(steps.begin(), steps.end(), [](const Step& s) { return s.every; });
  const auto split = static_cast<size_t>(every - steps.begin());
  const nlohmann::json* node = walk(&doc, steps, 0, split);
  std::vector<std::string> out;
  if (node != nullptr && every == steps.end()) {
    if (node->is_array()) {
      for (const auto& item : *node)
        out.push_back(as_text(item));
    } else {
      out.push_back(as_text(*node));
    }
    return out;
  }
  if (node == nullptr || !node->is_array()) {
    throw UserError(fmt::format("field '{}' is missing from the document (or is not a list)", path));
  }
  for (const auto& item : *node) {
    const nlohmann::json* leaf = walk(&item, steps, split + 1, steps.size());
    if (leaf == nullptr)
      throw UserError(fmt::format("field '{}' is missing from an element of the list", path));
    out.push_back(as_text(*leaf));
  }
  return out;
}

std::string render(std::string_view text, const nlohmann::json& doc) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if ((c == '{' || c == '}') && i + 1 < text.size() && text[i + 1] == c) {
      out += c;
      i += 2;
      continue;
    }
    if (c != '{') {
      out += c;
      ++i;
      continue;
    }
    const auto close = text.find('}', i);
    if (close == std::string_view::npos)
      throw UserError(fmt::format("template '{}': '{{' without '}}'", text));
    const std::string_view path = text.substr(i + 1, close - i - 1);
    const nlohmann::json* value = find_path(doc, path);
    if (value == nullptr)
      throw UserError(fmt::format("the document has no field '{}' (template '{}')", path, text));
    out += as_text(*value);
    i = close + 1;
  }
  return out;
}

}  // namespace dla::eval
