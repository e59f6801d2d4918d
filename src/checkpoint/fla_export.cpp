// dla models as flash-linear-attention checkpoints.
#include "dla/checkpoint/fla_export.h"

#include <fmt/format.h>

#include "dla/checkpoint/fla_import.h"
#include "dla/checkpoint/fla_names.h"
#include "dla/io/atomic_file.h"
#include "dla/io/safetensors.h"
#include "dla/util/error.h"

namespace dla::checkpoint {

nlohmann::json fla_config_json(const model::ModelOptions& options) {
  nlohmann::json config = {{"model_type", fla_model_type(options.mixer)},
                           {"vocab_size", options.vocab_size},
                           {"hidden_size", options.hidden_size},
                           {"num_hidden_layers", options.num_layers},
                           {"norm_eps", options.norm_eps},
                           {"tie_word_embeddings", options.tie_embeddings},
                           {"initializer_range", options.initializer_range}};
  if (options.mixer == model::MixerKind::gdn) {
    const auto& gdn = options.gdn;
    config.update(
        {{"hidden_ratio", options.mlp_ratio},
         {"intermediate_size", options.intermediate_size > 0 ? nlohmann::json(options.intermediate_size)
                                                             : nlohmann::json(nullptr)},
         {"hidden_act", "swish"},
         {"attn", nullptr},
         {"num_heads", gdn.num_heads},
         {"head_dim", gdn.head_dim},
         {"expand_v", gdn.expand_v},
         {"num_v_heads", gdn.num_v_heads > 0 ? nlohmann::json(gdn.num_v_heads) : nlohmann::json(nullptr)},
         {"conv_size", gdn.conv_size},
         {"use_gate", gdn.use_gate},
         {"use_short_conv", gdn.use_short_conv},
         {"allow_neg_eigval", gdn.allow_neg_eigval}});
  } else {
    const auto& m = options.mamba2;
    config.update({{"head_dim", m.head_dim},
                   {"state_size", m.state_size},
                   {"expand", m.expand},
                   {"n_groups", m.num_groups},
                   {"conv_kernel", m.conv_kernel},
                   {"use_conv_bias", m.use_conv_bias},
                   {"use_bias", false},
                   {"norm_before_gate", false},
                   {"rmsnorm", true},
                   {"hidden_act", "silu"}});
  }
  return config;
}

void export_fla_checkpoint(model::CausalLMImpl& model, const std::filesystem::path& dir,
                           const std::string& dtype) {
  const auto& options = model.options();
  if (options.memory.policy != memory::PolicyKind::single) {
    throw UserError(
        fmt::format("flash-linear-attention has no layer for the {} memory policy; only "
                    "model.memory.policy = single exports",
                    config::enum_name(options.memory.policy)));
  }
  if (dtype != "float32" && dtype != "bfloat16")
    throw UserError(fmt::format("--dtype must be float32 or bfloat16, got '{}'", dtype));
  if (options.mixer == model::MixerKind::mamba2 && options.use_mlp) {
    throw UserError(
        "fla's Mamba-2 model has no MLP; this model has model.use_mlp = true and cannot be exported");
  }
  std::filesystem::create_directories(dir);
  io::NamedTensors tensors;
  for (const auto& item : model.named_parameters()) {
    const auto name = fla_name_from_dla(item.key(), options.mixer);
    if (!name) throw UserError(fmt::format("{} has no flash-linear-attention name", item.key()));
    tensors.emplace_back(
        *name, item.value().detach().to(at::kCPU, dtype == "bfloat16" ? at::kBFloat16 : at::kFloat));
  }
  io::save_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
  const std::string text = fla_config_json(options).dump(2) + "\n";
  io::write_file_atomic(dir / "config.json", std::as_bytes(std::span(text.data(), text.size())));
}

}  // namespace dla::checkpoint
