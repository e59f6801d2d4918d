// Writing flash-linear-attention checkpoints, the inverse of fla_import.h: `config.json` in fla's layout and
// `model.safetensors` under fla's names, in float32 or bfloat16.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "dla/model/causal_lm.h"

namespace dla::checkpoint {

/// fla's config.json content for a model of `options` (the keys import-fla reads).
nlohmann::json fla_config_json(const model::ModelOptions& options);

/// Writes `model` as an fla checkpoint directory `dir` (created; existing files replaced), tensors in `dtype`
/// ("float32" or "bfloat16"). Models with a memory policy other than single have no fla counterpart and are
/// refused with dla::UserError.
void export_fla_checkpoint(model::CausalLMImpl& model, const std::filesystem::path& dir,
                           const std::string& dtype);

}  // namespace dla::checkpoint
