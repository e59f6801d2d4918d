// Training checkpoints: `RUN/step-NNNNNNNN/` holds everything a run needs to continue exactly: the model
// (config.yaml + model.safetensors, a model checkpoint in itself), the AdamW state, the progress (step,
// tokens, data cursor, world size, tokenizer), the RNG states, and manifest.json with the size and checksum
// of every file. Written into a temporary directory, synced, renamed; only then does `RUN/latest` move to it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/optim/adamw.h>

#include "dla/config/run_config.h"
#include "dla/model/causal_lm.h"

namespace dla::checkpoint {

inline constexpr const char* kLatestFile = "latest";
inline constexpr const char* kCheckpointManifest = "manifest.json";

/// Where a run stands.
struct TrainingProgress {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  int64_t samples_seen = 0;  ///< the data cursor: global samples consumed
  int world_size = 1;
  std::string tokenizer_fingerprint;  ///< of the training data's tokenizer; empty for generated data
};

/// "step-00000042".
std::string checkpoint_name(int64_t step);

/// Writes the checkpoint of `progress.step` into run_root and points `latest` at it. Failures (full disk,
/// permissions) throw dla::UserError and leave the earlier checkpoints and `latest` as they were.
std::filesystem::path save_train_checkpoint(const std::filesystem::path& run_root,
                                            const config::ResolvedConfig& config, model::CausalLMImpl& model,
                                            torch::optim::AdamW& optimizer, const TrainingProgress& progress);

/// What a check of one checkpoint found.
struct CheckpointStatus {
  std::filesystem::path dir;
  int64_t step = -1;
  uint64_t bytes = 0;
  std::string problem;  ///< empty when every file is present with its size and checksum
  bool ok() const { return problem.empty(); }
};

CheckpointStatus verify_checkpoint(const std::filesystem::path& dir);

/// Every `step-*` directory of run_root (temporaries excluded), checked, by increasing step.
std::vector<CheckpointStatus> list_checkpoints(const std::filesystem::path& run_root);

/// Deletes the checkpoints that are neither among the newest keep_last nor at a multiple of keep_every.
void apply_retention(const std::filesystem::path& run_root, int64_t keep_last, int64_t keep_every);

/// Restores a checkpoint into `model` and `optimizer` (built from the current config), after verifying it.
/// A damaged checkpoint, or one whose `model` section differs from `config`'s, throws dla::UserError naming
/// it. Returns the progress; `changed_keys` receives the other keys whose values differ from the
/// checkpoint's config (training-only changes, allowed).
TrainingProgress load_train_checkpoint(const std::filesystem::path& dir, const config::ResolvedConfig& config,
                                       model::CausalLMImpl& model, torch::optim::AdamW& optimizer,
                                       std::vector<std::string>& changed_keys);

}  // namespace dla::checkpoint
