// Reading flash-linear-attention checkpoints: a directory with `config.json` (the Hugging Face config of a
// GatedDeltaNetForCausalLM or Mamba2ForCausalLM) and `model.safetensors` (or shards listed in
// `model.safetensors.index.json`). The config becomes the `model` section of a dla run config; the tensors
// are renamed through the one name table (fla_names.h).
#pragma once

#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

#include "dla/checkpoint/model_checkpoint.h"
#include "dla/config/run_config.h"

namespace dla::checkpoint {

/// fla's `model_type` for a mixer: "gated_deltanet" or "mamba2".
std::string_view fla_model_type(model::MixerKind mixer);

/// A run config with defaults everywhere but `model`, which comes from fla's config.json content `config`.
/// `file` names the origin in messages and in the config's sources. An unsupported model_type or option,
/// and a missing, mistyped or out-of-range key, throw dla::UserError naming the file and fla's key.
config::ResolvedConfig run_config_from_fla(const nlohmann::json& config, const std::string& file);

/// Reads `path` as JSON, accepting Python's non-standard Infinity, -Infinity and NaN (Hugging Face writes
/// them, e.g. Mamba-2's dt_limit) as the strings "Infinity", "-Infinity" and "NaN".
nlohmann::json read_fla_json(const std::filesystem::path& path);

/// Reads the fla checkpoint directory `dir` into a dla model (CPU, float32). Tensors without a dla
/// counterpart, missing tensors and shape mismatches are reported together in one dla::UserError, under
/// fla's names. With tied embeddings a stored lm_head.weight is ignored, as transformers ignores it.
LoadedModel import_fla_checkpoint(const std::filesystem::path& dir);

}  // namespace dla::checkpoint
