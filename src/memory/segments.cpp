// Slot tables of the memory policies: the Fenwick buckets in closed form and the DLA boundary cache run
// token by token (spec/dla.md §3.2–§3.3). Shapes: B batch, T tokens, H heads, Q queries, S slots, N keys.
#include "dla/memory/segments.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include "dla/ops/kernels.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "boundary_scan_kernel.h"
#include "dla/ops/kernel_buffers.h"
#include "key_slots_kernel.h"
#endif

namespace dla::memory {
namespace {

#if defined(DLA_WITH_CUDA)
/// slot_of_keys on its CUDA kernel; undefined where the kernel does not take the inputs.
at::Tensor slot_of_keys_cuda(const at::Tensor& start_rows_S, const at::Tensor& keys_N) {
  if (!start_rows_S.is_cuda() || !keys_N.is_cuda() || start_rows_S.device() != keys_N.device() ||
      start_rows_S.scalar_type() != at::kLong || keys_N.scalar_type() != at::kLong ||
      !ops::use_fused_kernels(start_rows_S))
    return {};
  const at::Tensor rows = start_rows_S.unsqueeze(-2);
  const std::vector<int64_t> shape = at::infer_size(rows.sizes().slice(0, rows.dim() - 1), keys_N.sizes());
  if (shape.size() > static_cast<size_t>(kernels::kMaxKeySlotDims)) return {};
  std::vector<int64_t> row_shape = shape;
  row_shape.push_back(rows.size(-1));
  const at::Tensor rows_expanded = rows.expand(row_shape);
  const at::Tensor keys_expanded = keys_N.expand(shape);
  at::Tensor slot = at::empty(shape, keys_N.options());
  kernels::KeySlotDims dims{};
  dims.dims = static_cast<int>(shape.size());
  for (int d = 0; d < dims.dims; ++d) {
    dims.size[d] = shape[d];
    dims.row_stride[d] = rows_expanded.stride(d);
    dims.key_stride[d] = keys_expanded.stride(d);
  }
  dims.slot_stride = rows_expanded.stride(-1);
  dims.slots = rows_expanded.size(-1);
  dims.count = slot.numel();
  const c10::cuda::CUDAGuard device_guard(slot.device());
  const char* error =
      kernels::slot_of_keys(rows_expanded.data_ptr<int64_t>(), keys_expanded.data_ptr<int64_t>(),
                            slot.data_ptr<int64_t>(), dims, ops::current_cuda_stream(slot));
  TORCH_CHECK(error == nullptr, "slot_of_keys: CUDA kernel failed: ", error);
  return slot;
}
#endif

}  // namespace

at::Tensor slot_of_keys(const at::Tensor& start_rows_S, const at::Tensor& keys_N) {
#if defined(DLA_WITH_CUDA)
  if (at::Tensor slot = slot_of_keys_cuda(start_rows_S, keys_N); slot.defined()) return slot;
#endif
  // Slots run from the newest segment to the oldest, so the key's segment is the first one starting at or
  // before it. Ranking slot s as S − s (0 for an empty slot) makes it the highest-ranked holding slot: one
  // compare and one max over the [..., N, S] grid, in the narrowest integer type that holds the ranks.
  const int64_t num_slots = start_rows_S.size(-1);
  const at::ScalarType rank_type = num_slots < 256 ? at::kByte : at::kInt;
  const at::Tensor rank_S = at::arange(num_slots, 0, -1, start_rows_S.options().dtype(rank_type));
  const at::Tensor rank_1S =
      at::where(start_rows_S >= 0, rank_S, at::zeros({}, rank_S.options())).unsqueeze(-2);
  const at::Tensor holds_NS = start_rows_S.unsqueeze(-2) <= keys_N.unsqueeze(-1);
  const at::Tensor best_N = at::where(holds_NS, rank_1S, at::zeros({}, rank_S.options())).amax(/*dim=*/-1);
  const at::Tensor best_long_N = best_N.to(at::kLong);
  return at::where(best_long_N > 0, num_slots - best_long_N, at::full({}, -1, best_long_N.options()));
}

at::Tensor level_table(const SegmentTable& segments, int64_t num_tokens) {
  const at::Tensor rows_BHTS = segments.start_BHQS.narrow(/*dim=*/2, 0, num_tokens);
  const at::Tensor keys_T = at::arange(num_tokens, rows_BHTS.options());
  const at::Tensor level_BHTT = slot_of_keys(rows_BHTS, keys_T) + 1;
  const at::Tensor query_T1 = keys_T.unsqueeze(-1);
  return level_BHTT.masked_fill(keys_T == query_T1, 0).masked_fill(keys_T > query_T1, -1);
}

SegmentTable fenwick_segments(int64_t num_tokens, int64_t num_slots, int64_t first_query) {
  TORCH_CHECK(num_tokens >= 0 && num_slots >= 1 && first_query >= 0 && first_query <= num_tokens,
              "fenwick_segments: need num_tokens >= 0 and num_slots >= 1, got ", num_tokens, " and ",
              num_slots);
  TORCH_CHECK(num_tokens <= (int64_t{1} << num_slots), "fenwick_segments: ", num_tokens, " tokens need ",
              "more than the ", num_slots, " Fenwick levels configured (at most 2^", num_slots, " tokens)");
  const int64_t rows = num_tokens - first_query + 1;
  at::Tensor start_QS = at::full({rows, num_slots}, -1, at::kLong);
  auto start = start_QS.accessor<int64_t, 2>();
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = first_query + row;
    for (int64_t level = 1; level < num_slots; ++level) {
      if ((t >> (level - 1)) & 1) start[row][level - 1] = (t >> level) << level;
    }
    // The top slot also takes the buckets above it, which only query 2^num_slots (the state after the last
    // token of a full-length sequence) has; they all start at token 0.
    if (t >> (num_slots - 1)) start[row][num_slots - 1] = 0;
  }
  return {start_QS.view({1, 1, rows, num_slots}), at::Tensor(), at::Tensor()};
}

SegmentTable on_device(const SegmentTable& host_table, const at::Device& device) {
  TORCH_CHECK(host_table.start_BHQS.is_cpu(), "memory::on_device: the table must be on the host");
  if (device.is_cpu()) return host_table;
  const auto moved = [&](const at::Tensor& x) { return x.defined() ? x.to(device) : x; };
  return {moved(host_table.start_BHQS), moved(host_table.opener_BHQS), host_table.start_BHQS};
}

BoundaryCache::BoundaryCache(int64_t batch, int64_t heads, const BoundaryOptions& options)
    : options_(options), batch_(batch), heads_(heads), alive_(static_cast<size_t>(batch * heads)) {
  TORCH_CHECK(options.capacity >= 1, "BoundaryCache: capacity must be >= 1, got ", options.capacity);
}

void BoundaryCache::advance(const at::Tensor& u_BH, int64_t position) {
  TORCH_CHECK(u_BH.dim() == 2 && u_BH.size(0) == batch_ && u_BH.size(1) == heads_,
              "BoundaryCache: u must be [", batch_, ", ", heads_, "], got ", u_BH.sizes());
  const at::Tensor u_cpu = u_BH.to(at::kCPU, at::kFloat).contiguous();
  advance(u_cpu.accessor<float, 2>(), position);
}

namespace {

/// A candidate joins one (b, h)'s alive boundaries; past capacity − 1 of them one is evicted: the oldest, or
/// under MergeRule::lowest the smallest score (among equal scores the first in time order, the older one).
template <class Boundary>
void add_boundary(std::vector<Boundary>& alive, float score, int64_t position,
                  const BoundaryOptions& options) {
  alive.push_back({score, position});
  if (alive.size() <= static_cast<size_t>(options.capacity - 1)) return;
  auto evicted = alive.begin();
  if (options.merge == MergeRule::lowest) {
    evicted = std::min_element(alive.begin(), alive.end(),
                               [](const Boundary& a, const Boundary& b) { return a.score < b.score; });
  }
  alive.erase(evicted);
}

}  // namespace

void BoundaryCache::advance(const at::TensorAccessor<float, 2>& u, int64_t position) {
  TORCH_CHECK(position == tokens_seen_, "BoundaryCache: expected token ", tokens_seen_, ", got ", position);
  TORCH_CHECK(u.size(0) == batch_ && u.size(1) == heads_, "BoundaryCache: u must be [", batch_, ", ", heads_,
              "], got [", u.size(0), ", ", u.size(1), "]");
  ++tokens_seen_;
  if (position == 0) return;  // token 0 opens the oldest segment and is never a candidate
  const auto threshold = static_cast<float>(options_.threshold);
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t h = 0; h < heads_; ++h) {
      if (u[b][h] >= threshold)
        add_boundary(alive_[static_cast<size_t>(b * heads_ + h)], u[b][h], position, options_);
    }
  }
}

namespace {

/// Writes the slot rows of one (b, h) for the next query: alive boundaries newest first, then token 0's
/// segment, then empty slots (−1, left as they are when the rows are known to be blank).
template <class Alive, class Row>
void write_slot_row(const Alive& alive, bool any_token, Row start, Row opener, bool rows_blank = false) {
  const auto num_alive = static_cast<int64_t>(alive.size());
  for (int64_t slot = 0; slot < start.size(0) && !rows_blank; ++slot) {
    start[slot] = -1;
    opener[slot] = -1;
  }
  for (int64_t slot = 0; slot < num_alive; ++slot) {
    start[slot] = alive[static_cast<size_t>(num_alive - 1 - slot)].position;
    opener[slot] = start[slot];
  }
  if (any_token && num_alive < start.size(0)) start[num_alive] = 0;
}

}  // namespace

void BoundaryCache::write_slot_rows(const at::Tensor& start_BHS, const at::Tensor& opener_BHS) const {
  TORCH_CHECK(start_BHS.sizes() == opener_BHS.sizes() && start_BHS.dim() == 3 &&
                  start_BHS.size(0) == batch_ && start_BHS.size(1) == heads_ &&
                  start_BHS.size(2) == options_.capacity,
              "BoundaryCache: slot rows must be [", batch_, ", ", heads_, ", ", options_.capacity, "]");
  auto start = start_BHS.accessor<int64_t, 3>();
  auto opener = opener_BHS.accessor<int64_t, 3>();
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t h = 0; h < heads_; ++h)
      write_slot_row(alive_[static_cast<size_t>(b * heads_ + h)], tokens_seen_ > 0, start[b][h],
                     opener[b][h]);
  }
}

void BoundaryCache::write_slot_rows(at::TensorAccessor<int64_t, 4> start_BHQS,
                                    at::TensorAccessor<int64_t, 4> opener_BHQS, int64_t query) const {
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t h = 0; h < heads_; ++h) {
      write_slot_row(alive_[static_cast<size_t>(b * heads_ + h)], tokens_seen_ > 0, start_BHQS[b][h][query],
                     opener_BHQS[b][h][query]);
    }
  }
}

void BoundaryCache::scan(const at::TensorAccessor<float, 3>& u_TBH, at::TensorAccessor<int64_t, 4> start_BHQS,
                         at::TensorAccessor<int64_t, 4> opener_BHQS) {
  const int64_t tokens = u_TBH.size(0);
  TORCH_CHECK(u_TBH.size(1) == batch_ && u_TBH.size(2) == heads_ && start_BHQS.size(2) == tokens + 1 &&
                  opener_BHQS.size(2) == tokens + 1,
              "BoundaryCache: scan needs u [T, ", batch_, ", ", heads_, "] and tables of T + 1 rows");
  const int64_t first = tokens_seen_;
  const auto threshold = static_cast<float>(options_.threshold);
  // Sequences and heads are independent; each writes only its own rows.
  at::parallel_for(0, batch_ * heads_, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads_, h = bh % heads_;
      std::vector<Boundary>& alive = alive_[static_cast<size_t>(bh)];
      auto start_QS = start_BHQS[b][h];
      auto opener_QS = opener_BHQS[b][h];
      write_slot_row(alive, first > 0, start_QS[0], opener_QS[0], /*rows_blank=*/true);
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t position = first + t;
        const float u = u_TBH[t][b][h];
        if (position > 0 && u >= threshold) add_boundary(alive, u, position, options_);
        write_slot_row(alive, true, start_QS[t + 1], opener_QS[t + 1], /*rows_blank=*/true);
      }
    }
  });
  tokens_seen_ += tokens;
}

int64_t BoundaryCache::size_bytes() const {
  return batch_ * heads_ * (options_.capacity - 1) * static_cast<int64_t>(sizeof(Boundary));
}

bool boundary_scan_uses_cuda_kernel([[maybe_unused]] const at::Tensor& u_BTH,
                                    [[maybe_unused]] const BoundaryOptions& options) {
#if defined(DLA_WITH_CUDA)
  return u_BTH.is_cuda() && u_BTH.scalar_type() == at::kFloat && ops::use_fused_kernels(u_BTH) &&
         options.capacity <= kernels::kMaxScanCapacity;
#else
  return false;
#endif
}

namespace {

void check_scores(const at::Tensor& u_BTH) {
  TORCH_CHECK(u_BTH.dim() == 3 && u_BTH.scalar_type() == at::kFloat,
              "dla_segments: u must be float32 [B, T, H], got ", u_BTH.scalar_type(), " ", u_BTH.sizes());
}

SegmentTable dla_segments_cuda([[maybe_unused]] const at::Tensor& u_BTH,
                               [[maybe_unused]] const BoundaryOptions& options) {
#if defined(DLA_WITH_CUDA)
  RECORD_FUNCTION("dla::boundary_scan", std::vector<c10::IValue>());
  const c10::cuda::CUDAGuard device_guard(u_BTH.device());
  const at::Tensor u = u_BTH.contiguous();
  const int64_t batch = u.size(0), tokens = u.size(1), heads = u.size(2);
  const auto table_options = u.options().dtype(at::kLong);
  at::Tensor start_BHQS = at::empty({batch, heads, tokens + 1, options.capacity}, table_options);
  at::Tensor opener_BHQS = at::empty({batch, heads, tokens + 1, options.capacity}, table_options);
  const kernels::BoundaryScanDims dims{.batch = batch,
                                       .tokens = tokens,
                                       .heads = heads,
                                       .capacity = options.capacity,
                                       .threshold = static_cast<float>(options.threshold),
                                       .evict_lowest = options.merge == MergeRule::lowest};
  at::Tensor workspace =
      at::empty({kernels::boundary_scan_workspace_bytes(dims)}, u.options().dtype(at::kByte));
  const char* error = kernels::boundary_scan(u.data_ptr<float>(), start_BHQS.data_ptr<int64_t>(),
                                             opener_BHQS.data_ptr<int64_t>(), workspace.data_ptr(), dims,
                                             ops::current_cuda_stream(u));
  TORCH_CHECK(error == nullptr, "DLA boundary scan: CUDA kernel failed: ", error);
  return {start_BHQS, opener_BHQS, at::Tensor()};
#else
  TORCH_CHECK(false, "DLA boundary scan: dla was built without CUDA");
#endif
}

}  // namespace

SegmentTable dla_segments(const at::Tensor& u_BTH, const BoundaryOptions& options) {
  check_scores(u_BTH);
  TORCH_CHECK(options.capacity >= 1, "dla_segments: capacity must be >= 1, got ", options.capacity);
  if (boundary_scan_uses_cuda_kernel(u_BTH, options)) return dla_segments_cuda(u_BTH, options);
  BoundaryCache cache(u_BTH.size(0), u_BTH.size(2), options);
  return dla_segments(u_BTH, cache);
}

SegmentTable dla_segments(const at::Tensor& u_BTH, BoundaryCache& cache) {
  RECORD_FUNCTION("dla::boundary_scan", std::vector<c10::IValue>());
  check_scores(u_BTH);
  const int64_t batch = u_BTH.size(0), tokens = u_BTH.size(1), heads = u_BTH.size(2);
  const at::Tensor u_cpu_TBH = u_BTH.to(at::kCPU).transpose(0, 1).contiguous();
  const auto u_TBH = u_cpu_TBH.accessor<float, 3>();
  // Tables bound for a GPU are built in pinned memory, so their copies there do not wait on the host.
  const auto table_options = at::TensorOptions().dtype(at::kLong).pinned_memory(u_BTH.is_cuda());
  at::Tensor start_BHQS = at::full({batch, heads, tokens + 1, cache.capacity()}, -1, table_options);
  at::Tensor opener_BHQS = at::full({batch, heads, tokens + 1, cache.capacity()}, -1, table_options);
  cache.scan(u_TBH, start_BHQS.accessor<int64_t, 4>(), opener_BHQS.accessor<int64_t, 4>());
  const at::Device device = u_BTH.device();
  // The host table stays with a device copy: chunkwise reads from it which slots chunk boundaries use.
  return {start_BHQS.to(device, /*non_blocking=*/true), opener_BHQS.to(device, /*non_blocking=*/true),
          device.is_cpu() ? at::Tensor() : start_BHQS};
}

at::Tensor straight_through_confidence(const SegmentTable& segments, const at::Tensor& u_BTH) {
  const at::Tensor& opener_BHQS = segments.opener_BHQS;
  TORCH_CHECK(
      opener_BHQS.defined() && opener_BHQS.size(0) == u_BTH.size(0) && opener_BHQS.size(1) == u_BTH.size(2),
      "straight_through_confidence: need openers [B, H, Q, S] for u ", u_BTH.sizes());
  const int64_t batch = opener_BHQS.size(0), heads = opener_BHQS.size(1);
  const at::Tensor index_BHX = opener_BHQS.clamp_min(0).reshape({batch, heads, -1});
  const at::Tensor u_BHX = u_BTH.transpose(1, 2).gather(2, index_BHX).view(opener_BHQS.sizes());
  // u − detach(u) is 0 in value but passes the gradient 1 to u.
  const at::Tensor through_BHQS = (u_BHX - u_BHX.detach()).masked_fill(opener_BHQS < 0, 0);
  return through_BHQS + 1;
}

}  // namespace dla::memory
