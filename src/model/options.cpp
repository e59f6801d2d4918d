// Derived sizes and cross-key checks of the model options.
#include "dla/model/options.h"

#include <fmt/format.h>

namespace dla::model {

int64_t ModelOptions::mlp_intermediate_size() const {
  if (intermediate_size > 0) return intermediate_size;
  const auto base = static_cast<int64_t>(static_cast<double>(hidden_size) * mlp_ratio * 2.0 / 3.0);
  return 256 * ((base + 255) / 256);
}

void ModelOptions::validate() const {
  using config::ConfigError;
  memory.boundary_stride();
  if (mixer == MixerKind::gdn) {
    const double v = static_cast<double>(gdn.head_dim) * gdn.expand_v;
    if (v != static_cast<double>(static_cast<int64_t>(v))) {
      throw ConfigError("model.gdn.expand_v",
                        fmt::format("model.gdn.head_dim ({}) · model.gdn.expand_v ({}) = {} "
                                    "must be a whole number",
                                    gdn.head_dim, gdn.expand_v, v));
    }
    if (gdn.value_heads() % gdn.num_heads != 0) {
      throw ConfigError(
          "model.gdn.num_v_heads",
          fmt::format("model.gdn.num_v_heads ({}) must be a multiple of model.gdn.num_heads ({})",
                      gdn.num_v_heads, gdn.num_heads));
    }
  } else {
    const int64_t inner = mamba2.expand * hidden_size;
    if (inner % mamba2.head_dim != 0) {
      throw ConfigError("model.mamba2.head_dim",
                        fmt::format("model.mamba2.expand · model.hidden_size = {} must be a multiple of "
                                    "model.mamba2.head_dim ({})",
                                    inner, mamba2.head_dim));
    }
    if ((inner / mamba2.head_dim) % mamba2.num_groups != 0) {
      throw ConfigError("model.mamba2.num_groups",
                        fmt::format("the {} Mamba-2 heads must be a multiple of model.mamba2.num_groups ({})",
                                    inner / mamba2.head_dim, mamba2.num_groups));
    }
  }
}

}  // namespace dla::model
