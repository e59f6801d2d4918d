// Which segment holds each past token, for every query: the slot tables that the recurrent and chunkwise
// forms of multi-state linear attention (spec/dla.md §4) share across memory policies. A policy decides the
// segments; the forms only read these tables, so a new policy needs no new form.
// Shapes: B batch, T tokens, H heads, Q = T + 1 queries (query T is the state after the last token),
// S slots (the levels 1..NL−1 a state can have; NL counts the sentinel level 0 too).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dla/memory/levels.h"

namespace dla::memory {

/// The segments of [0, t − 1] as query t sees them, for t = 0..T, one slot per level: slot ℓ holds the
/// segment at level ℓ + 1. Levels fall from old to new, so a token belongs to the first slot whose segment
/// starts at or before it.
struct SegmentTable {
  at::Tensor start_BHQS;   ///< int64: first token of the slot's segment, −1 when no segment has that level
  at::Tensor opener_BHQS;  ///< int64: the boundary whose score is the segment's confidence (spec §3.4), −1
                           ///< for confidence 1 (token 0's segment, empty slots); undefined when every
                           ///< confidence is 1
  /// start_BHQS on the host, where the table was built there and then moved to a device (fenwick, and DLA's
  /// host scan); undefined otherwise. memory::chunkwise reads from it which slots hold a state at a chunk
  /// boundary without waiting on the device.
  at::Tensor host_start_BHQS;
  /// B and H may be 1 when every sequence and head shares the table (fenwick).
  int64_t num_slots() const { return start_BHQS.size(3); }
};

/// The slot (0-based, level − 1) of key s_BH_N at query t for every entry, from start rows gathered at t
/// (start_BH_S, one row per query, broadcastable against keys [..., N]). Keys must be < their query; for a
/// key with no slot (an empty row) the result is −1. int64 tensors on a GPU take a CUDA kernel that writes
/// only the result; otherwise the search is a compare and a max over the [..., N, S] grid.
at::Tensor slot_of_keys(const at::Tensor& start_rows_S, const at::Tensor& keys_N);

/// level(t, s) for every query t < T and key s, [B|1, H|1, T, T]: 0 on the diagonal, −1 above it. The full
/// table of the quadratic oracle, O(T²·S).
at::Tensor level_table(const SegmentTable& segments, int64_t num_tokens);

/// Fenwick buckets (log-linear attention) for queries first_query..num_tokens with `num_slots` slots: at
/// query t the bucket of level ℓ starts at (t >> ℓ) << ℓ when bit ℓ − 1 of t is set. Throws when the tokens
/// need more slots.
SegmentTable fenwick_segments(int64_t num_tokens, int64_t num_slots, int64_t first_query = 0);

/// A table built on the host, moved to `device`, with the host copy kept in host_start_BHQS (on the host
/// itself, the table unchanged).
SegmentTable on_device(const SegmentTable& host_table, const at::Device& device);

/// The DLA boundary cache (spec §3.2) for a batch of sequences, advanced one token at a time: the same rule
/// as boundary_death_times, kept as the alive boundaries themselves so that decoding needs constant memory.
class BoundaryCache {
 public:
  BoundaryCache(int64_t batch, int64_t heads, const BoundaryOptions& options);
  /// Processes token `position` (all sequences at the same position) with scores u_BH (float32): candidates
  /// join, an overflow evicts. Token 0 is never a candidate.
  void advance(const at::Tensor& u_BH, int64_t position);
  /// The same from a float32 CPU accessor of [B, H] scores.
  void advance(const at::TensorAccessor<float, 2>& u_BH, int64_t position);
  /// Writes the slots as the next query sees them into start_BHS and opener_BHS: int64 CPU tensors (views
  /// allowed) of [B, H, capacity].
  void write_slot_rows(const at::Tensor& start_BHS, const at::Tensor& opener_BHS) const;
  /// The same into row `query` of [B, H, Q, capacity] tables.
  void write_slot_rows(at::TensorAccessor<int64_t, 4> start_BHQS, at::TensorAccessor<int64_t, 4> opener_BHQS,
                       int64_t query) const;
  /// Processes T tokens at once, u_TBH a float32 CPU accessor of [T, B, H] scores, writing rows 0..T of
  /// [B, H, T + 1, capacity] tables filled with −1: row 0 as the cache stands, row t + 1 after token t. The
  /// same as advance and write_slot_rows token by token, with the (b, h) sequences run in parallel.
  void scan(const at::TensorAccessor<float, 3>& u_TBH, at::TensorAccessor<int64_t, 4> start_BHQS,
            at::TensorAccessor<int64_t, 4> opener_BHQS);
  int64_t tokens_seen() const { return tokens_seen_; }
  int64_t capacity() const { return options_.capacity; }
  /// Bytes held: positions and scores of at most capacity − 1 boundaries per sequence and head.
  int64_t size_bytes() const;

 private:
  struct Boundary {
    float score;
    int64_t position;
  };
  BoundaryOptions options_;
  int64_t batch_, heads_;
  int64_t tokens_seen_ = 0;
  std::vector<std::vector<Boundary>> alive_;  ///< per (b, h), in time order
};

/// The confidence of every slot (spec §3.4), [B, H, Q, S] in u's dtype: ste(u at the slot's opener), forward
/// value 1 and derivative 1 with respect to that score; 1 without gradient where there is no opener. Openers
/// index u_BTH's tokens, so the table must start at token 0.
at::Tensor straight_through_confidence(const SegmentTable& segments, const at::Tensor& u_BTH);

/// DLA segments from scores u_BTH (float32) for queries 0..T: at query t, slot ℓ < m holds the segment opened
/// by the (ℓ+1)-th newest boundary alive after t − 1 (m of them), slot m the segment of token 0. S =
/// capacity. The tables are on u's device; on CUDA the scan runs there (boundary_scan_uses_cuda_kernel).
SegmentTable dla_segments(const at::Tensor& u_BTH, const BoundaryOptions& options);
/// The same, continuing `cache` (advanced over the T tokens): rows for queries p..p + T, p its tokens seen.
/// The cache lives on the host, so this scan always runs there.
SegmentTable dla_segments(const at::Tensor& u_BTH, BoundaryCache& cache);

/// Whether dla_segments(u_BTH, options) scans on the GPU: u float32 on CUDA, capacity ≤ 32, and the kernel
/// choice (dla/ops/kernels.h) not forced to LibTorch ops. Otherwise the host scan runs.
bool boundary_scan_uses_cuda_kernel(const at::Tensor& u_BTH, const BoundaryOptions& options);

}  // namespace dla::memory
