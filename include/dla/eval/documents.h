// The documents of an evaluation task, read from local files in the common formats of evaluation data:
// JSON lines, a JSON array, groups of text lines, plain text (whole, by line or by WikiText page), and the
// LLM-Adapters multiple-choice instruction format. Each document becomes a JSON object for the templates.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dla/util/error.h"

namespace dla::eval {

struct DocumentSource {
  std::vector<std::string> files;  ///< read in order, relative to the data root unless absolute
  /// jsonl | json | lines (groups of `fields.size()` lines) | text | llm_adapters
  std::string format = "jsonl";
  std::vector<std::string> fields;  ///< lines: the field name of each line of a record
  std::string split = "none";       ///< text: none (one document) | lines | wikitext (one per page)
  std::string labels_file;          ///< optional: line i is the `labels_field` of document i
  std::string labels_field = "label";
};

/// A data file that does not exist; a task marked optional is skipped on it.
class MissingDataFile : public UserError {
 public:
  using UserError::UserError;
};

/// Reads every document. Missing files throw MissingDataFile; malformed records throw UserError naming the
/// file and line.
std::vector<nlohmann::json> load_documents(const DocumentSource& source,
                                           const std::filesystem::path& data_root);

/// WikiText's tokenised spacing undone (" @-@ " → "-", " , " → ", ", …), as lm-evaluation-harness does
/// before scoring WikiText pages.
std::string wikitext_detokenize(std::string text);

}  // namespace dla::eval
