// A dla model checkpoint: a directory holding `config.yaml` (the complete resolved run config; its `model`
// section defines the architecture) and `model.safetensors` (the parameters under dla's names, float32,
// with a format mark in the metadata). Written to `<dir>.tmp.<pid>` and renamed, so a reader sees either
// the old checkpoint or the complete new one. Later: optimiser state and training progress.
#pragma once

#include <filesystem>

#include "dla/config/run_config.h"
#include "dla/model/causal_lm.h"

namespace dla::checkpoint {

inline constexpr const char* kModelConfigFile = "config.yaml";
inline constexpr const char* kModelWeightsFile = "model.safetensors";
/// Metadata "format" of model.safetensors; a change of layout bumps "format_version".
inline constexpr const char* kModelFormat = "dla-model";
inline constexpr int kModelFormatVersion = 1;

/// A model read back from a checkpoint, on the CPU, in training mode.
struct LoadedModel {
  config::ResolvedConfig config;
  model::CausalLM model{nullptr};
};

/// Writes `model` and `config` to the checkpoint directory `dir`. An existing checkpoint at `dir` is
/// replaced; any other existing, non-empty path is left alone and is an error. Failures throw
/// dla::UserError naming the path.
void save_model_checkpoint(const std::filesystem::path& dir, const config::ResolvedConfig& config,
                           model::CausalLMImpl& model);

/// Writes config.yaml and model.safetensors into the existing directory `dir` (each file atomically); the
/// building block of save_model_checkpoint and of training checkpoints.
void write_model_files(const std::filesystem::path& dir, const config::ResolvedConfig& config,
                       model::CausalLMImpl& model);

/// Reads the checkpoint directory `dir`. A missing directory or file, a bad config, a malformed
/// safetensors file or tensors that do not fit the config's model throw dla::UserError naming the file.
LoadedModel load_model_checkpoint(const std::filesystem::path& dir);

}  // namespace dla::checkpoint
