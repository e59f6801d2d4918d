// Running a suite on a model, and writing what people read: results.json, results.md, results.csv and plots.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "dla/eval/tasks.h"

namespace dla::eval {

struct EvalOptions {
  std::filesystem::path data_root;  ///< empty: the suite's data_root
  int64_t limit = 0;                ///< > 0: at most this many documents, examples or samples per task
  int64_t batch_size = 0;           ///< 0: the suite's
};

/// Every task of `suite` on `model` (left in eval mode; the caller restores training mode). Tasks that are
/// optional and lack data are reported as skipped.
std::vector<TaskResult> run_suite(const SuiteSpec& suite, model::CausalLMImpl& model,
                                  const data::Tokenizer& tokenizer, int64_t vocab_size, at::Device device,
                                  const EvalOptions& options, Shard shard = {});

struct CheckpointResults {
  std::string checkpoint;
  std::vector<TaskResult> tasks;
};

/// Writes results.json (tasks, metrics, n, settings, versions), results.md and results.csv (checkpoints
/// side by side) and, per checkpoint and task, the loss-by-position plot and the NIAH/passkey accuracy
/// heatmap (SVG) into `out`.
void write_report(const std::filesystem::path& out, const SuiteSpec& suite, const EvalOptions& options,
                  const std::vector<CheckpointResults>& results);

/// "runs/a/model" → "runs-a-model": a file-name-safe form of a checkpoint path for plot names.
std::string file_label(const std::string& path);

}  // namespace dla::eval
