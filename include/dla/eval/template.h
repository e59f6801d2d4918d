// Field templates of evaluation tasks: "Question: {goal}\nAnswer:" filled from one document (a JSON object).
// A field is a path: dotted keys and array indices ("question.choices[2].text"); "[]" in a list path maps
// over an array ("question.choices[].text"). "{{" and "}}" are literal braces.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dla::eval {

/// The value at `path` in `doc`; nullptr when some part of the path is absent.
const nlohmann::json* find_path(const nlohmann::json& doc, std::string_view path);

/// The values at a path that may contain one "[]", as text (strings as they are, other values as JSON).
/// Throws UserError naming the path when it does not lead to values.
std::vector<std::string> values_at(const nlohmann::json& doc, std::string_view path);

/// `text` with each {path} replaced by the document's value there. Throws UserError naming the field when the
/// document has no such field, or when a brace is not closed.
std::string render(std::string_view text, const nlohmann::json& doc);

/// A document value as text: strings as they are, numbers and other values as compact JSON.
std::string as_text(const nlohmann::json& value);

}  // namespace dla::eval
