// The one table between flash-linear-attention's parameter names and dla's, for GDN and Mamba-2 causal
// LMs. Used by import-fla, export and the parity tests.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "dla/model/causal_lm.h"

namespace dla::checkpoint {

/// dla's name for fla's `name` (e.g. "model.layers.3.attn.q_proj.weight" -> "layers.3.mixer.q_proj.weight");
/// nullopt when the name has no counterpart.
std::optional<std::string> dla_name_from_fla(std::string_view fla_name, model::MixerKind mixer);
/// The inverse of dla_name_from_fla.
std::optional<std::string> fla_name_from_dla(std::string_view dla_name, model::MixerKind mixer);

}  // namespace dla::checkpoint
