// Memory-policy options: the `model.memory` section of the run config (docs/config.md). Kept apart from the
// modules so that the config code does not pull in LibTorch. The method and its options: spec/dla.md §3.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "dla/config/schema.h"

namespace dla::memory {

/// Which segments a mixer's memory keeps (spec §1).
enum class PolicyKind {
  single,   ///< one state: the plain backbone
  fenwick,  ///< Fenwick buckets: log-linear attention
  dla,      ///< information-aware boundaries and a capacity-bounded cache: the method
};

/// Which alive boundary goes when a new candidate overflows the cache (`merge`).
enum class MergeRule {
  lowest,  ///< the one with the smallest (u, position): ties evict the older (the method)
  oldest,  ///< the oldest one: a FIFO of the newest M - 1 candidates (ablation)
};

}  // namespace dla::memory

template <>
struct dla::config::EnumNames<dla::memory::PolicyKind> {
  static constexpr std::array<std::string_view, 3> names{"single", "fenwick", "dla"};
};
template <>
struct dla::config::EnumNames<dla::memory::MergeRule> {
  static constexpr std::array<std::string_view, 2> names{"lowest", "oldest"};
};

namespace dla::memory {

struct MemoryOptions {
  PolicyKind policy = PolicyKind::single;
  int64_t capacity = 8;           ///< M
  double threshold = 0.5;         ///< τ
  int64_t score_dim = 32;         ///< d_r
  std::string boundary = "info";  ///< "info" or "stride:K"
  MergeRule merge = MergeRule::lowest;
  double rate_loss = 0.0;      ///< weight of the ratio loss; 0 is off
  double target_rate = 0.2;    ///< fraction of candidates the ratio loss pulls towards
  int64_t max_length = 16384;  ///< fenwick: longest sequence; NL = ceil(log2 max_length) + 1

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field(
        "policy", policy,
        "Segments kept per layer and head: single (plain backbone), fenwick (log-linear attention) or dla.");
    v.field("capacity", capacity, "dla: at most this many segment states M (so M − 1 alive boundaries).",
            Bounds::at_least(1));
    v.field("threshold", threshold,
            "dla: token t ≥ 1 is a candidate boundary when its score u_t ≥ threshold.",
            Bounds::between(0, 1));
    v.field("score_dim", score_dim, "dla: width d_r per head of the boundary-score projections.",
            Bounds::at_least(1));
    v.field("boundary", boundary,
            "dla: `info` (learned scores) or `stride:K` (a boundary every K tokens, no gradient; ablation).");
    v.field("merge", merge,
            "dla: on overflow evict the lowest-scored boundary (ties: the older) or the oldest.");
    v.field("rate_loss", rate_loss, "dla: weight of the ratio loss on the fraction of candidates; 0 is off.",
            Bounds::at_least(0));
    v.field("target_rate", target_rate, "dla: the fraction of candidate boundaries the ratio loss aims for.",
            Bounds::between(0.001, 0.999));
    v.field("max_length", max_length,
            "fenwick: longest sequence supported; λ has ceil(log2 max_length) + 1 levels.",
            Bounds::at_least(2));
  }

  /// λ levels NL, the sentinel included: 1 for single, capacity + 1 for dla, ceil(log2 max_length) + 1 for
  /// fenwick.
  int64_t num_levels() const;
  /// K of `boundary = stride:K`, 0 for `info`; throws config::ConfigError for anything else.
  int64_t boundary_stride() const;
};

}  // namespace dla::memory
