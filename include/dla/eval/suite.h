// Evaluation suites: a YAML file listing tasks (configs/eval/*.yaml, docs/eval.md). A task names its type,
// its data (a local file, or generator settings), the templates that turn a document into a prompt, and its
// metrics.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dla/eval/documents.h"

namespace dla::eval {

struct TaskSpec {
  std::string name;
  /// perplexity | cloze | multiple_choice | generate (documents) or mqar | niah | passkey (generated)
  std::string type;
  bool optional = false;  ///< a missing data file skips the task with a note instead of failing the suite
  int version = 1;        ///< reported with the results; bump it when the task's definition changes
  DocumentSource data;
  std::string text = "{text}";       ///< perplexity: the document text
  std::string detokenize = "none";   ///< perplexity: none | wikitext
  std::string context;               ///< cloze, multiple_choice, generate: the prompt
  std::string target;                ///< cloze: the continuation scored after the context
  std::vector<std::string> choices;  ///< multiple_choice: one template per choice …
  std::string choices_from;          ///< … or a list field ("choices", "question.choices[].text")
  std::string contexts_from;         ///< multiple_choice with one context per choice (WinoGrande)
  std::string continuation;          ///< … and the continuation they share
  std::string gold = "{label}";      ///< multiple_choice: the index of the right choice, or its label …
  std::string gold_labels_from;      ///< … among these labels ("question.choices[].label")
  std::vector<std::string> answers;  ///< generate: acceptable answers (templates) …
  std::string answers_from;          ///< … or a list field
  std::string target_delimiter = " ";
  std::string fewshot_delimiter = "\n\n";
  int64_t num_fewshot = 0;
  int64_t max_length = 2048;                            ///< tokens the model sees at once
  int64_t max_new_tokens = 32;                          ///< generate, niah, passkey
  std::vector<std::string> until = {"\n"};              ///< generate: the answer ends at the first of these
  std::vector<std::string> metrics;                     ///< empty: the type's defaults
  nlohmann::json generator = nlohmann::json::object();  ///< mqar, niah, passkey settings
};

struct SuiteSpec {
  std::string name;
  std::filesystem::path file;
  std::string data_root;  ///< where task data files are; --data-root overrides
  int64_t seed = 1234;    ///< few-shot sampling and generators
  int64_t batch_size = 8;
  std::vector<TaskSpec> tasks;
};

/// Reads a suite file. Unknown keys, wrong types and unknown task types are UserErrors naming the file, the
/// task and the key.
SuiteSpec load_suite(const std::filesystem::path& file);

/// Whether some task of the suite works on text (every type but mqar, which works on token ids).
bool needs_tokenizer(const SuiteSpec& suite);

/// The metrics a task of `type` reports when its suite lists none.
std::vector<std::string> default_metrics(const std::string& type);

}  // namespace dla::eval
