// Helpers for the checkpoint, import and score tests: small model configs, fla-format directories, and
// running `dla` for its standard output alone.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dla/config/run_config.h"
#include "dla/io/safetensors.h"
#include "dla/model/causal_lm.h"
#include "test_util.h"

namespace dla::test {

/// A run config with a small model of kind `mixer` (vocab 64, hidden 32, 2 layers; Mamba-2 without MLP, as
/// fla's), then `overrides` (`key=value`).
config::ResolvedConfig small_model_config(model::MixerKind mixer,
                                          const std::vector<std::string>& overrides = {});

/// Adds seeded noise to every parameter, so that no two parameters of a kind are equal (norm weights start
/// at 1) and a mix-up of names shows.
void perturb_parameters(model::CausalLMImpl& model, uint64_t seed);

/// The parameters of `model` under fla's names.
io::NamedTensors fla_named_parameters(model::CausalLMImpl& model);

/// fla's config.json content for a model of `options` (the keys import-fla reads).
nlohmann::json fla_config_json(const model::ModelOptions& options);

/// Writes an fla checkpoint directory: `config_text` as config.json, `tensors` as model.safetensors.
void write_fla_dir(const std::filesystem::path& dir, const std::string& config_text,
                   const io::NamedTensors& tensors);

/// Mean next-token loss of `ids_BT` (rows scored separately, averaged) under `model`, in eval mode.
double score_in_process(model::CausalLMImpl& model, const at::Tensor& ids_BT);

/// Token ids as text: one row per line, ids separated by spaces.
std::string ids_text(const at::Tensor& ids_BT);

}  // namespace dla::test
