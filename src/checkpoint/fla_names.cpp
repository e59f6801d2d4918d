// Name table between flash-linear-attention and dla. `{}` is a layer index (first) or the rest of a name
// (last).
#include "dla/checkpoint/fla_names.h"

#include <array>
#include <span>
#include <vector>

namespace dla::checkpoint {
namespace {

struct NamePair {
  std::string_view fla;
  std::string_view dla;
};

constexpr std::array kGdnNames{
    NamePair{"model.embeddings.weight", "embeddings.weight"},
    NamePair{"model.layers.{}.attn_norm.weight", "layers.{}.mixer_norm.weight"},
    // The memory's parameters sit in the layer, as log-linear attention's l_proj and L do.
    NamePair{"model.layers.{}.attn.l_proj.weight", "layers.{}.mixer.memory.l_proj.weight"},
    NamePair{"model.layers.{}.attn.L", "layers.{}.mixer.memory.L"},
    NamePair{"model.layers.{}.attn.score_a_proj.weight", "layers.{}.mixer.memory.score_a_proj.weight"},
    NamePair{"model.layers.{}.attn.score_b_proj.weight", "layers.{}.mixer.memory.score_b_proj.weight"},
    NamePair{"model.layers.{}.attn.{}", "layers.{}.mixer.{}"},
    NamePair{"model.layers.{}.mlp_norm.weight", "layers.{}.mlp_norm.weight"},
    NamePair{"model.layers.{}.mlp.{}", "layers.{}.mlp.{}"},
    NamePair{"model.norm.weight", "norm.weight"},
    NamePair{"lm_head.weight", "lm_head.weight"},
};

constexpr std::array kMamba2Names{
    NamePair{"backbone.embeddings.weight", "embeddings.weight"},
    NamePair{"backbone.layers.{}.norm.weight", "layers.{}.mixer_norm.weight"},
    NamePair{"backbone.layers.{}.mixer.l_proj.weight", "layers.{}.mixer.memory.l_proj.weight"},
    NamePair{"backbone.layers.{}.mixer.L", "layers.{}.mixer.memory.L"},
    NamePair{"backbone.layers.{}.mixer.score_a_proj.weight", "layers.{}.mixer.memory.score_a_proj.weight"},
    NamePair{"backbone.layers.{}.mixer.score_b_proj.weight", "layers.{}.mixer.memory.score_b_proj.weight"},
    NamePair{"backbone.layers.{}.mixer.{}", "layers.{}.mixer.{}"},
    NamePair{"backbone.norm_f.weight", "norm.weight"},
    NamePair{"lm_head.weight", "lm_head.weight"},
};

// Matches `name` against `pattern`; on success returns what each `{}` stood for. A `{}` followed by more
// pattern text matches one dotted component; a trailing `{}` matches the rest.
std::optional<std::vector<std::string>> match(std::string_view pattern, std::string_view name) {
  std::vector<std::string> captures;
  while (true) {
    const auto hole = pattern.find("{}");
    if (hole == std::string_view::npos) {
      if (pattern == name) return captures;
      return std::nullopt;
    }
    if (name.substr(0, hole) != pattern.substr(0, hole)) return std::nullopt;
    name.remove_prefix(hole);
    pattern.remove_prefix(hole + 2);
    const std::size_t length = pattern.empty() ? name.size() : name.find('.');
    if (length == 0 || length == std::string_view::npos) return std::nullopt;
    captures.emplace_back(name.substr(0, length));
    name.remove_prefix(length);
  }
}

std::string fill(std::string_view pattern, const std::vector<std::string>& captures) {
  std::string out;
  std::size_t next = 0;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern.substr(i, 2) == "{}") {
      out += captures.at(next++);
      ++i;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

template <bool kFromFla>
std::optional<std::string> translate(std::string_view name, model::MixerKind mixer) {
  const std::span<const NamePair> table = mixer == model::MixerKind::gdn
                                              ? std::span<const NamePair>(kGdnNames)
                                              : std::span<const NamePair>(kMamba2Names);
  for (const auto& pair : table) {
    const auto from = kFromFla ? pair.fla : pair.dla;
    const auto to = kFromFla ? pair.dla : pair.fla;
    if (auto captures = match(from, name)) return fill(to, *captures);
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> dla_name_from_fla(std::string_view fla_name, model::MixerKind mixer) {
  return translate<true>(fla_name, mixer);
}

std::optional<std::string> fla_name_from_dla(std::string_view dla_name, model::MixerKind mixer) {
  return translate<false>(dla_name, mixer);
}

}  // namespace dla::checkpoint
