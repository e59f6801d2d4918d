// Running one evaluation task against a model: documents (or generated prompts) to requests, requests to
// scores, scores to metrics with lm-evaluation-harness's definitions (docs/eval.md).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dla/eval/scorer.h"
#include "dla/eval/suite.h"

namespace dla::eval {

struct TaskResult {
  std::string name;
  std::string type;
  int version = 1;
  int64_t n = 0;                          ///< documents, examples or prompts scored
  std::map<std::string, double> metrics;  ///< as the suite asked, in name order
  std::string skipped;                    ///< why an optional task did not run; empty when it ran
  PositionLoss positions;                 ///< perplexity, cloze: loss by input position
  nlohmann::json grid;      ///< niah, passkey: {"lengths": [...], "depths": [...], "accuracy": [[...]]}
  nlohmann::json settings;  ///< num_fewshot, max_length, generator settings
};

struct TaskContext {
  Scorer& scorer;
  const data::Tokenizer& tokenizer;
  int64_t vocab_size;
  std::filesystem::path data_root;
  int64_t seed = 1234;
  int64_t limit = 0;  ///< > 0: only the first `limit` documents (for quick checks)
};

/// Runs `task`. A missing data file of an optional task gives a skipped result; of any other task, an error.
TaskResult run_task(const TaskSpec& task, TaskContext& context);

/// Lower case, no punctuation, no articles (a, an, the), single spaces: the SQuAD-style answer normalisation
/// behind exact_match and contains.
std::string normalize_answer(const std::string& text);

/// Index of the largest value; the first one on ties (as numpy's argmax).
size_t argmax(const std::vector<double>& values);

/// Unicode code points in UTF-8 `text` (Python's len()), the length acc_norm divides by.
size_t count_characters(const std::string& text);

/// Words separated by whitespace, as lm-evaluation-harness counts them for word perplexity.
size_t count_words(const std::string& text);

}  // namespace dla::eval
