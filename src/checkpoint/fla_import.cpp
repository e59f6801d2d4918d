// Import of flash-linear-attention checkpoints: config.json to dla's model options, tensors renamed
// through the fla name table, every mismatch reported at once.
#include "dla/checkpoint/fla_import.h"

#include <array>
#include <cmath>
#include <fstream>
#include <set>
#include <span>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "dla/checkpoint/fla_names.h"
#include "dla/checkpoint/state_dict.h"
#include "dla/io/safetensors.h"
#include "dla/util/error.h"

namespace dla::checkpoint {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

enum class ValueKind { integer, number, boolean };

/// One config.json key and the dla config key it sets.
struct KeyMapping {
  std::string_view fla;
  std::string_view dla;
  ValueKind kind;
  bool required = true;          ///< optional keys keep dla's default when absent (fla added them later)
  bool null_means_zero = false;  ///< fla's "None: derive it" is dla's 0
};

// GatedDeltaNetForCausalLM. num_v_heads and allow_neg_eigval are newer than the first fla releases.
constexpr std::array kGdnKeys{
    KeyMapping{"vocab_size", "model.vocab_size", ValueKind::integer},
    KeyMapping{"hidden_size", "model.hidden_size", ValueKind::integer},
    KeyMapping{"num_hidden_layers", "model.num_layers", ValueKind::integer},
    KeyMapping{"norm_eps", "model.norm_eps", ValueKind::number},
    KeyMapping{"hidden_ratio", "model.mlp_ratio", ValueKind::number},
    KeyMapping{"intermediate_size", "model.intermediate_size", ValueKind::integer, /*required=*/true,
               /*null_means_zero=*/true},
    KeyMapping{"tie_word_embeddings", "model.tie_embeddings", ValueKind::boolean},
    KeyMapping{"initializer_range", "model.initializer_range", ValueKind::number, /*required=*/false},
    KeyMapping{"num_heads", "model.gdn.num_heads", ValueKind::integer},
    KeyMapping{"head_dim", "model.gdn.head_dim", ValueKind::integer},
    KeyMapping{"expand_v", "model.gdn.expand_v", ValueKind::number},
    KeyMapping{"num_v_heads", "model.gdn.num_v_heads", ValueKind::integer, /*required=*/false,
               /*null_means_zero=*/true},
    KeyMapping{"conv_size", "model.gdn.conv_size", ValueKind::integer},
    KeyMapping{"use_gate", "model.gdn.use_gate", ValueKind::boolean},
    KeyMapping{"use_short_conv", "model.gdn.use_short_conv", ValueKind::boolean},
    KeyMapping{"allow_neg_eigval", "model.gdn.allow_neg_eigval", ValueKind::boolean, /*required=*/false},
};

// Mamba2ForCausalLM (no MLP: model.use_mlp is false).
constexpr std::array kMamba2Keys{
    KeyMapping{"vocab_size", "model.vocab_size", ValueKind::integer},
    KeyMapping{"hidden_size", "model.hidden_size", ValueKind::integer},
    KeyMapping{"num_hidden_layers", "model.num_layers", ValueKind::integer},
    KeyMapping{"norm_eps", "model.norm_eps", ValueKind::number},
    KeyMapping{"tie_word_embeddings", "model.tie_embeddings", ValueKind::boolean},
    KeyMapping{"initializer_range", "model.initializer_range", ValueKind::number, /*required=*/false},
    KeyMapping{"head_dim", "model.mamba2.head_dim", ValueKind::integer},
    KeyMapping{"state_size", "model.mamba2.state_size", ValueKind::integer},
    KeyMapping{"expand", "model.mamba2.expand", ValueKind::integer},
    KeyMapping{"n_groups", "model.mamba2.num_groups", ValueKind::integer},
    KeyMapping{"conv_kernel", "model.mamba2.conv_kernel", ValueKind::integer},
    KeyMapping{"use_conv_bias", "model.mamba2.use_conv_bias", ValueKind::boolean},
};

/// An fla option that dla does not implement: importing is only right when it has this value (or is absent).
struct RequiredValue {
  std::string_view key;
  json value;
  std::string_view meaning;
};

std::vector<RequiredValue> required_values(model::MixerKind mixer) {
  if (mixer == model::MixerKind::gdn) {
    return {{"attn", nullptr, "hybrid softmax-attention layers"},
            {"attnres_block_size", nullptr, "attention residuals"},
            {"hidden_act", "swish", "the MLP activation (dla's MLP is SwiGLU)"}};
  }
  return {{"use_bias", false, "biases in in_proj and out_proj"},
          {"norm_before_gate", false, "the order of norm and gate"},
          {"rmsnorm", true, "the gated RMSNorm"},
          {"D_has_hdim", false, "a D per head channel"},
          {"dt_limit", json::array({0.0, "Infinity"}), "clamping of dt"},
          {"time_step_limit", json::array({0.0, "Infinity"}), "clamping of dt"},
          {"hidden_act", "silu", "the activation"}};
}

// JSON values compare as numbers where both are numbers (0 == 0.0), and "silu" == "swish".
bool same_value(const json& got, const json& want) {
  if (got.is_number() && want.is_number()) return got.get<double>() == want.get<double>();
  if (got.is_array() && want.is_array()) {
    if (got.size() != want.size()) return false;
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (!same_value(got[i], want[i])) return false;
    }
    return true;
  }
  const auto activation = [](const json& j) {
    return j.is_string() && (j.get<std::string>() == "silu" || j.get<std::string>() == "swish");
  };
  if (activation(got) && activation(want)) return true;
  return got == want;
}

std::string_view kind_text(ValueKind kind) {
  switch (kind) {
    case ValueKind::integer:
      return "an integer";
    case ValueKind::number:
      return "a number";
    case ValueKind::boolean:
      return "true or false";
  }
  return "";
}

bool has_kind(const json& value, ValueKind kind) {
  switch (kind) {
    case ValueKind::integer:
      return value.is_number_integer() ||
             (value.is_number_float() && value.get<double>() == std::floor(value.get<double>()));
    case ValueKind::number:
      return value.is_number();
    case ValueKind::boolean:
      return value.is_boolean();
  }
  return false;
}

// Sets one dla key from config.json through the config schema, so that its bounds apply too.
void apply_key(const config::Schema& schema, const KeyMapping& mapping, const json& config,
               const std::string& file, config::SourceMap& sources) {
  const std::string fla_key(mapping.fla);
  const auto it = config.find(fla_key);
  if (it == config.end()) {
    if (!mapping.required) return;
    throw UserError(fmt::format("{}: key '{}' is missing (it sets dla's {})", file, fla_key, mapping.dla));
  }
  std::string text;
  if (it->is_null() && mapping.null_means_zero) {
    text = "0";
  } else if (has_kind(*it, mapping.kind)) {
    text = it->dump();
  } else {
    throw UserError(fmt::format("{}: key '{}': expected {}{}, got {}", file, fla_key, kind_text(mapping.kind),
                                mapping.null_means_zero ? " or null" : "", it->dump()));
  }
  const config::Field* field = schema.find_field(mapping.dla);
  TORCH_INTERNAL_ASSERT(field != nullptr, "no config key ", mapping.dla);
  try {
    field->assign(YAML::Node(text));
  } catch (const config::DecodeError& e) {
    throw UserError(fmt::format("{}: key '{}' (dla's {}): {}", file, fla_key, mapping.dla, e.what()));
  }
  sources[std::string(mapping.dla)] = config::Source{file, 0, 0, ""};
}

// Replaces Python's bare Infinity, -Infinity and NaN (outside strings) by JSON strings.
std::string quote_python_constants(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const std::string_view constant : {"-Infinity", "Infinity", "NaN"}) {
      if (std::string_view(text).substr(i, constant.size()) == constant) {
        out += fmt::format("\"{}\"", constant);
        i += constant.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

using FlaTensors = std::map<std::string, at::Tensor>;

// model.safetensors, or the shards that model.safetensors.index.json lists.
FlaTensors read_fla_tensors(const fs::path& dir, std::string& source) {
  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::is_regular_file(single)) {
    source = single.string();
    return io::SafetensorsReader(single).load_all();
  }
  if (!fs::is_regular_file(index)) {
    throw UserError(
        fmt::format("{}: missing (and no model.safetensors.index.json); dla reads fla weights from "
                    "safetensors files only, convert pytorch_model.bin first",
                    single.string()));
  }
  source = index.string();
  const json map = read_fla_json(index);
  if (!map.contains("weight_map") || !map["weight_map"].is_object()) {
    throw UserError(fmt::format("{}: expected an object \"weight_map\" (tensor name -> shard file)", source));
  }
  std::set<std::string> shards;
  for (const auto& [name, shard] : map["weight_map"].items()) {
    if (!shard.is_string()) {
      throw UserError(
          fmt::format("{}: weight_map['{}'] is {}, expected a file name", source, name, shard.dump()));
    }
    shards.insert(shard.get<std::string>());
  }
  FlaTensors tensors;
  for (const auto& shard : shards) {
    const fs::path path = dir / shard;
    if (!fs::is_regular_file(path)) {
      throw UserError(fmt::format("{}: the shard '{}' it lists does not exist", source, path.string()));
    }
    for (auto& [name, tensor] : io::SafetensorsReader(path).load_all()) {
      if (!tensors.emplace(name, tensor).second) {
        throw UserError(fmt::format("{}: tensor '{}' appears in more than one shard", path.string(), name));
      }
    }
  }
  return tensors;
}

std::string shape_text(at::IntArrayRef sizes) {
  return fmt::format("[{}]", fmt::join(sizes, ", "));
}

// fla tensors under dla's names, checked against `model`: every problem is collected into one error.
std::map<std::string, at::Tensor> rename_fla_tensors(const FlaTensors& fla_tensors,
                                                     model::CausalLMImpl& model, const std::string& source) {
  const model::MixerKind mixer = model.options().mixer;
  const auto params = model.named_parameters(/*recurse=*/true);
  std::map<std::string, at::Tensor> out;
  std::vector<std::string> problems;
  for (const auto& [fla_name, tensor] : fla_tensors) {
    const auto dla_name = dla_name_from_fla(fla_name, mixer);
    if (model.options().tie_embeddings && dla_name == "lm_head.weight") {
      const auto embeddings = fla_tensors.find(*fla_name_from_dla("embeddings.weight", mixer));
      if (embeddings == fla_tensors.end() || !at::equal(embeddings->second, tensor)) {
        spdlog::warn("{}: ignoring '{}': tie_word_embeddings is true, so the LM head is the embedding matrix",
                     source, fla_name);
      }
      continue;
    }
    const auto* param = dla_name ? params.find(*dla_name) : nullptr;
    if (param == nullptr) {
      problems.push_back(
          fmt::format("unexpected tensor '{}' {}: no parameter of this {} model corresponds to it", fla_name,
                      shape_text(tensor.sizes()), fla_model_type(mixer)));
    } else if (!at::isFloatingType(tensor.scalar_type())) {
      problems.push_back(fmt::format("'{}' has dtype {}, expected a floating-point type", fla_name,
                                     c10::toString(tensor.scalar_type())));
    } else if (tensor.sizes() != param->sizes()) {
      problems.push_back(fmt::format("'{}' has shape {} but the model expects {}", fla_name,
                                     shape_text(tensor.sizes()), shape_text(param->sizes())));
    } else {
      out.emplace(*dla_name, tensor);
    }
  }
  for (const auto& item : params) {
    const auto fla_name = fla_name_from_dla(item.key(), mixer).value_or(item.key());
    if (!fla_tensors.contains(fla_name)) {
      problems.push_back(fmt::format("missing tensor '{}' {}", fla_name, shape_text(item.value().sizes())));
    }
  }
  if (!problems.empty()) {
    std::string message = source + ": the tensors do not match the model its config.json describes:";
    for (const auto& problem : problems)
      message += "\n  " + problem;
    throw UserError(message);
  }
  return out;
}

}  // namespace

std::string_view fla_model_type(model::MixerKind mixer) {
  return mixer == model::MixerKind::gdn ? "gated_deltanet" : "mamba2";
}

config::ResolvedConfig run_config_from_fla(const json& config, const std::string& file) {
  if (!config.is_object()) throw UserError(file + ": expected a JSON object, got " + config.dump());
  const auto type = config.find("model_type");
  if (type == config.end() || !type->is_string()) {
    throw UserError(fmt::format("{}: key 'model_type' is {}; expected \"gated_deltanet\" or \"mamba2\"", file,
                                type == config.end() ? "missing" : type->dump()));
  }
  model::MixerKind mixer;
  if (*type == fla_model_type(model::MixerKind::gdn)) {
    mixer = model::MixerKind::gdn;
  } else if (*type == fla_model_type(model::MixerKind::mamba2)) {
    mixer = model::MixerKind::mamba2;
  } else {
    throw UserError(fmt::format(
        "{}: model_type {} is not supported; dla imports \"gated_deltanet\" (GatedDeltaNetForCausalLM) and "
        "\"mamba2\" (Mamba2ForCausalLM)",
        file, type->dump()));
  }

  config::ResolvedConfig resolved;
  auto& model = resolved.config.model;
  model.mixer = mixer;
  model.use_mlp = mixer == model::MixerKind::gdn;
  resolved.sources["model.mixer"] = resolved.sources["model.use_mlp"] = config::Source{file, 0, 0, ""};
  const config::Schema schema = config::Schema::of(resolved.config);
  const auto keys = mixer == model::MixerKind::gdn ? std::span<const KeyMapping>(kGdnKeys)
                                                   : std::span<const KeyMapping>(kMamba2Keys);
  for (const auto& mapping : keys)
    apply_key(schema, mapping, config, file, resolved.sources);
  if (const auto range = config.find("A_init_range");
      mixer == model::MixerKind::mamba2 && range != config.end()) {
    if (!range->is_array() || range->size() != 2 || !(*range)[0].is_number() || !(*range)[1].is_number()) {
      throw UserError(
          fmt::format("{}: key 'A_init_range': expected [min, max], got {}", file, range->dump()));
    }
    model.mamba2.a_init_min = (*range)[0].get<double>();
    model.mamba2.a_init_max = (*range)[1].get<double>();
  }
  for (const auto& required : required_values(mixer)) {
    const auto it = config.find(std::string(required.key));
    if (it != config.end() && !same_value(*it, required.value)) {
      throw UserError(fmt::format("{}: {} = {} is not supported (dla implements {} = {} only: {})", file,
                                  required.key, it->dump(), required.key, required.value.dump(),
                                  required.meaning));
    }
  }
  try {
    resolved.config.validate();
  } catch (const config::ConfigError& e) {
    throw UserError(fmt::format("{}: {}", file, e.what()));
  }
  return resolved;
}

json read_fla_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot be read", path.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(quote_python_constants(buffer.str()));
  } catch (const json::parse_error& e) {
    throw UserError(fmt::format("{}: invalid JSON: {}", path.string(), e.what()));
  }
}

LoadedModel import_fla_checkpoint(const fs::path& dir) {
  if (!fs::is_directory(dir)) {
    throw UserError(fmt::format("fla checkpoint '{}' {}", dir.string(),
                                fs::exists(dir) ? "is not a directory" : "does not exist"));
  }
  const fs::path config_file = dir / "config.json";
  if (!fs::is_regular_file(config_file)) {
    throw UserError(
        fmt::format("{}: missing; an fla checkpoint directory holds config.json and model.safetensors",
                    config_file.string()));
  }
  LoadedModel loaded;
  loaded.config = run_config_from_fla(read_fla_json(config_file), config_file.string());
  loaded.model = model::CausalLM(loaded.config.config.model);
  std::string source;
  const FlaTensors fla_tensors = read_fla_tensors(dir, source);
  load_parameters(*loaded.model, rename_fla_tensors(fla_tensors, *loaded.model, source), source);
  return loaded;
}

}  // namespace dla::checkpoint
