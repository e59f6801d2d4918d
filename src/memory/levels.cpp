// The DLA boundary scan and the DLA and Fenwick level tables (spec/dla.md §3.2, §3.3, §4.3).
// Shapes: B batch, T tokens, H heads.
#include "dla/memory/levels.h"

#include <bit>
#include <deque>
#include <set>
#include <utility>

#include <ATen/ATen.h>

namespace dla::memory {
namespace {

/// The death times of one (batch, head): u_T are its scores, death_T (length T) is written.
void scan_boundaries(const at::TensorAccessor<float, 1>& u_T, at::TensorAccessor<int64_t, 1> death_T,
                     const BoundaryOptions& options) {
  const int64_t num_tokens = u_T.size(0);
  const auto max_alive = static_cast<size_t>(options.capacity - 1);
  // The spec compares in float32, so the threshold is rounded once, the same way in every form.
  const auto threshold = static_cast<float>(options.threshold);
  // Keyed by (u, position): begin() is the lowest score, and among equal scores the older boundary.
  std::set<std::pair<float, int64_t>> alive_by_score;
  std::deque<int64_t> alive_by_age;

  for (int64_t t = 0; t < num_tokens; ++t)
    death_T[t] = -1;
  if (num_tokens > 0) death_T[0] = num_tokens;  // token 0 opens the oldest segment and is never merged away
  for (int64_t t = 1; t < num_tokens; ++t) {
    if (!(u_T[t] >= threshold)) continue;
    death_T[t] = num_tokens;
    int64_t evicted = -1;
    if (options.merge == MergeRule::lowest) {
      // The new candidate joins the contest first, so it may be the one evicted (death at its own index).
      alive_by_score.emplace(u_T[t], t);
      if (alive_by_score.size() > max_alive) {
        evicted = alive_by_score.begin()->second;
        alive_by_score.erase(alive_by_score.begin());
      }
    } else {
      alive_by_age.push_back(t);
      if (alive_by_age.size() > max_alive) {
        evicted = alive_by_age.front();
        alive_by_age.pop_front();
      }
    }
    if (evicted >= 0) death_T[evicted] = t;
  }
}

}  // namespace

at::Tensor boundary_death_times(const at::Tensor& u_BTH, const BoundaryOptions& options) {
  TORCH_CHECK(u_BTH.dim() == 3, "boundary_death_times: u must be [B,T,H], got ", u_BTH.dim(), " dims, sizes ",
              u_BTH.sizes());
  TORCH_CHECK(u_BTH.scalar_type() == at::kFloat,
              "boundary_death_times: u must be float32 (scores are compared ", "in float32), got ",
              u_BTH.scalar_type());
  TORCH_CHECK(options.capacity >= 1,
              "boundary_death_times: capacity must be >= 1 (at most capacity segments), got ",
              options.capacity);
  const at::Tensor u_BHT = u_BTH.to(at::kCPU).transpose(1, 2).contiguous();
  const int64_t batch = u_BHT.size(0), heads = u_BHT.size(1), tokens = u_BHT.size(2);
  at::Tensor death_BHT = at::empty({batch, heads, tokens}, at::kLong);
  const auto u = u_BHT.accessor<float, 3>();
  auto death = death_BHT.accessor<int64_t, 3>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h)
      scan_boundaries(u[b][h], death[b][h], options);
  }
  return death_BHT;
}

at::Tensor dla_levels(const at::Tensor& death_BHT) {
  TORCH_CHECK(death_BHT.dim() == 3, "dla_levels: death must be [B,H,T], got ", death_BHT.dim(),
              " dims, sizes ", death_BHT.sizes());
  TORCH_CHECK(death_BHT.scalar_type() == at::kLong, "dla_levels: death must be int64, got ",
              death_BHT.scalar_type());
  const at::Tensor death_cpu_BHT = death_BHT.to(at::kCPU).contiguous();
  const int64_t batch = death_cpu_BHT.size(0), heads = death_cpu_BHT.size(1), tokens = death_cpu_BHT.size(2);
  at::Tensor level_BHTT = at::full({batch, heads, tokens, tokens}, -1, at::kLong);
  const auto death = death_cpu_BHT.accessor<int64_t, 3>();
  auto level = level_BHTT.accessor<int64_t, 4>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < tokens; ++t) {
        level[b][h][t][t] = 0;
        // Walking s from t - 1 down counts the boundaries alive after t - 1 in (s, t - 1]. Token 0 is never
        // a boundary, so s = 0 is never counted.
        int64_t num_newer_boundaries = 0;
        for (int64_t s = t - 1; s >= 0; --s) {
          level[b][h][t][s] = 1 + num_newer_boundaries;
          const int64_t d = death[b][h][s];
          if (s >= 1 && d != -1 && t - 1 < d) ++num_newer_boundaries;
        }
      }
    }
  }
  return level_BHTT;
}

at::Tensor fenwick_levels(int64_t num_tokens) {
  TORCH_CHECK(num_tokens >= 0, "fenwick_levels: the number of tokens must be >= 0, got ", num_tokens);
  at::Tensor level_TT = at::full({num_tokens, num_tokens}, -1, at::kLong);
  auto level = level_TT.accessor<int64_t, 2>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t s = 0; s <= t; ++s) {
      level[t][s] = std::bit_width(static_cast<uint64_t>(t ^ s));
    }
  }
  return level_TT;
}

}  // namespace dla::memory
