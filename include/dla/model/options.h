// Model options: one struct per component, each field with its default and meaning. They form the
// `model` section of the run config (docs/config.md) and are kept apart from the modules so that the
// config code does not pull in LibTorch.
#pragma once

#include <cstdint>

#include "dla/config/schema.h"
#include "dla/memory/options.h"

namespace dla::model {

enum class MixerKind { gdn, mamba2 };
}  // namespace dla::model

template <>
struct dla::config::EnumNames<dla::model::MixerKind> {
  static constexpr std::array<std::string_view, 2> names{"gdn", "mamba2"};
};

namespace dla::model {

struct GdnOptions {
  int64_t num_heads = 2;    ///< H: query/key heads
  int64_t head_dim = 32;    ///< K: key head dim
  double expand_v = 1.0;    ///< V = head_dim · expand_v (must be whole)
  int64_t num_v_heads = 0;  ///< HV: value heads; 0 means num_heads; must be a multiple of num_heads
  int64_t conv_size = 4;    ///< width of the short causal convolutions
  bool use_short_conv = true;
  bool use_gate = true;           ///< output gate g_proj with the gated RMSNorm
  bool allow_neg_eigval = false;  ///< β = 2·sigmoid(·) instead of sigmoid(·)

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("num_heads", num_heads, "Query/key heads H.", Bounds::at_least(1));
    v.field("head_dim", head_dim, "Key head dim K.", Bounds::at_least(1));
    v.field("expand_v", expand_v, "Value head dim = head_dim · expand_v; must be a whole number.",
            Bounds::positive());
    v.field("num_v_heads", num_v_heads, "Value heads; 0 means num_heads; must be a multiple of num_heads.",
            Bounds::at_least(0));
    v.field("conv_size", conv_size, "Width of the short causal depthwise convolutions on q, k, v.",
            Bounds::at_least(1));
    v.field("use_short_conv", use_short_conv, "Use the short convolutions (fla default true).");
    v.field("use_gate", use_gate, "Gate the output with g_proj through the gated RMSNorm.");
    v.field("allow_neg_eigval", allow_neg_eigval,
            "β = 2·sigmoid instead of sigmoid (eigenvalues in (−1, 1)).");
  }

  int64_t value_heads() const { return num_v_heads == 0 ? num_heads : num_v_heads; }
  int64_t value_head_dim() const { return static_cast<int64_t>(static_cast<double>(head_dim) * expand_v); }
};

struct Mamba2Options {
  int64_t head_dim = 16;    ///< P
  int64_t state_size = 16;  ///< N
  int64_t expand = 2;       ///< inner dim I = expand · hidden_size
  int64_t num_groups = 1;   ///< G: groups of heads sharing B and C
  int64_t conv_kernel = 4;
  bool use_conv_bias = true;
  double a_init_min = 1.0;  ///< A_log ← log U(a_init_min, a_init_max)
  double a_init_max = 16.0;

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("head_dim", head_dim, "Head dim P; heads H = expand · hidden_size / head_dim.",
            Bounds::at_least(1));
    v.field("state_size", state_size, "State size N (dimension of B and C).", Bounds::at_least(1));
    v.field("expand", expand, "Inner dim = expand · hidden_size.", Bounds::at_least(1));
    v.field("num_groups", num_groups, "Groups of heads that share B and C (fla n_groups).",
            Bounds::at_least(1));
    v.field("conv_kernel", conv_kernel, "Width of the causal depthwise convolution.", Bounds::at_least(1));
    v.field("use_conv_bias", use_conv_bias, "The convolution has a bias.");
    v.field("a_init_min", a_init_min, "A_log is initialised to log U(a_init_min, a_init_max).",
            Bounds::positive());
    v.field("a_init_max", a_init_max, "See a_init_min.", Bounds::positive());
  }
};

struct ModelOptions {
  MixerKind mixer = MixerKind::gdn;
  int64_t vocab_size = 256;
  int64_t hidden_size = 64;
  int64_t num_layers = 2;
  double norm_eps = 1e-6;
  bool use_mlp = true;
  double mlp_ratio = 4.0;
  int64_t intermediate_size = 0;  ///< 0: 256·ceil(⌊D·mlp_ratio·2/3⌋ / 256), as fla
  bool tie_embeddings = false;
  double initializer_range = 0.02;
  int64_t chunk_size = 64;
  GdnOptions gdn;
  Mamba2Options mamba2;
  memory::MemoryOptions memory;

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("mixer", mixer, "Sequence mixer of every layer: Gated DeltaNet or Mamba-2.");
    v.field("vocab_size", vocab_size, "Vocabulary size (embedding and LM head rows).", Bounds::at_least(2));
    v.field("hidden_size", hidden_size, "Model dim D.", Bounds::at_least(1));
    v.field("num_layers", num_layers, "Number of blocks.", Bounds::at_least(1));
    v.field("norm_eps", norm_eps, "Epsilon of every RMSNorm (fla: 1e-6 for GDN models, 1e-5 for Mamba-2).",
            Bounds::positive());
    v.field("use_mlp", use_mlp,
            "Each block has a SwiGLU MLP after the mixer (fla's Mamba-2 model has none).");
    v.field("mlp_ratio", mlp_ratio, "MLP size ratio when intermediate_size is 0.", Bounds::positive());
    v.field("intermediate_size", intermediate_size,
            "MLP inner dim; 0 derives 256·ceil(floor(D·mlp_ratio·2/3)/256) as fla does.",
            Bounds::at_least(0));
    v.field("tie_embeddings", tie_embeddings, "The LM head shares the embedding matrix.");
    v.field("initializer_range", initializer_range,
            "Std of the normal init of linear, conv and embedding weights.", Bounds::positive());
    v.field("chunk_size", chunk_size, "Chunk length of the chunkwise-parallel training kernels.",
            Bounds::at_least(1));
    v.section("gdn", gdn, "Gated DeltaNet mixer (used when model.mixer = gdn).");
    v.section("mamba2", mamba2, "Mamba-2 mixer (used when model.mixer = mamba2).");
    v.section("memory", memory,
              "Memory policy of every mixer: which states it keeps and how the output reads them "
              "(docs/memory/dla.md).");
  }

  /// The MLP's inner dim.
  int64_t mlp_intermediate_size() const;
  /// Cross-key checks (head sizes that must divide); throws config::ConfigError naming the keys.
  void validate() const;
};

}  // namespace dla::model
