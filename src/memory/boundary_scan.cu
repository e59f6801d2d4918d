// CUDA kernels of the DLA boundary scan (spec/dla.md §3.2; the host version is BoundaryCache::scan). A warp
// scans a sequence's tokens one by one. Lane i holds the i-th newest alive boundary (its score and position),
// so a candidate joining is one shuffle up; an overflow evicts the oldest (the last lane) or the lowest
// score, found by a warp min-reduction of order-preserving keys (ties go to the older boundary, as on the
// host), and the lanes behind it shuffle down. After each token lane i writes slot i of the next query's row:
// boundary i while i < alive, then token 0's segment, then empty slots (−1).
//
// The scan is one dependent chain, so a sequence is cut into pieces that warps scan side by side. Both rules
// keep the best max_alive boundaries of all candidates so far by one order (position; or score, then
// position), and the best of a union are the best of the parts' best: so a piece's cache at its start is
// that of the pieces before it, each first summed up alone (the cache it ends with, from empty), then
// inserted oldest first. scan_pieces_kernel writes those summaries, scan_rows_kernel the rows.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "boundary_scan_kernel.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error \
    "dla's boundary-scan kernel uses warp min-reductions (sm_80+): set DLA_CUDA_ARCHITECTURES to 80 or newer"
#endif

namespace dla::memory::kernels {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr unsigned kAllLanes = 0xffffffffu;

struct Slot {
  float score;
  int position;
};

/// The score as an unsigned key in the same order, −0 and +0 equal as in float comparisons (scores are never
/// NaN: a NaN is no candidate).
__device__ unsigned order_key(float score) {
  const unsigned bits = __float_as_uint(score + 0.f);  // −0 + 0 = +0
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

/// The lane holding the lowest score among lanes < alive; among equal scores the older (higher) lane.
__device__ int lowest_lane(const Slot& mine, int lane, int alive) {
  const unsigned key = lane < alive ? order_key(mine.score) : ~0u;
  const unsigned lowest = __reduce_min_sync(kAllLanes, key);
  const unsigned holders = __ballot_sync(kAllLanes, lane < alive && key == lowest);
  return 31 - __clz(static_cast<int>(holders));
}

/// A warp's cache of alive boundaries: lane i's is the i-th newest.
struct Cache {
  Slot mine{0.f, -1};
  int alive = 0;
};

/// One (batch, head) sequence of the scan.
struct Sequence {
  const float* u_T;  // stride H between tokens
  long long stride;
  int tokens, max_alive;
  float threshold;
  bool evict_lowest;

  __device__ Sequence(const float* u_BTH, long long sequence, const BoundaryScanDims& dims)
      : u_T(u_BTH + sequence / dims.heads * dims.tokens * dims.heads + sequence % dims.heads),
        stride(dims.heads),
        tokens(static_cast<int>(dims.tokens)),
        max_alive(static_cast<int>(dims.capacity) - 1),
        threshold(dims.threshold),
        evict_lowest(dims.evict_lowest) {}

  /// Makes (u, position) the newest boundary, evicting one when more than max_alive are then alive.
  __device__ void insert(Cache& cache, float u, int position, int lane) const {
    const float moved_score = __shfl_up_sync(kAllLanes, cache.mine.score, 1);
    const int moved_position = __shfl_up_sync(kAllLanes, cache.mine.position, 1);
    cache.mine = lane == 0 ? Slot{u, position} : Slot{moved_score, moved_position};
    if (++cache.alive > max_alive) {
      // Evicting the oldest drops the last lane; evicting lane e moves the lanes behind it up by one.
      const int evicted = evict_lowest ? lowest_lane(cache.mine, lane, cache.alive) : cache.alive - 1;
      const float next_score = __shfl_down_sync(kAllLanes, cache.mine.score, 1);
      const int next_position = __shfl_down_sync(kAllLanes, cache.mine.position, 1);
      if (lane >= evicted) cache.mine = Slot{next_score, next_position};
      cache.alive = max_alive;
    }
  }

  /// Scans tokens [first, last) into the cache, calling after_token(position) after each. Each lane holds one
  /// of the next 32 scores, loaded a group ahead so that the chain never waits for memory; which are
  /// candidates is one ballot, and a token that is not costs no shuffle.
  template <class AfterToken>
  __device__ void scan(Cache& cache, int first, int last, int lane, AfterToken after_token) const {
    const auto score = [&](int position) { return position < last ? u_T[position * stride] : 0.f; };
    float next_u = score(first + lane);
    for (int group = first; group < last; group += 32) {
      const float u_lane = next_u;
      if (group + 32 < last) next_u = score(group + 32 + lane);
      const unsigned candidates =
          __ballot_sync(kAllLanes, group + lane < last && group + lane > 0 && u_lane >= threshold);
      const int count = min(32, last - group);
      for (int j = 0; j < count; ++j) {
        if ((candidates >> j) & 1u) insert(cache, __shfl_sync(kAllLanes, u_lane, j), group + j, lane);
        after_token(group + j);
      }
    }
  }
};

/// A sequence's slot tables.
struct Rows {
  long long* start_QS;
  long long* opener_QS;
  int slots;

  __device__ Rows(long long* start_BHQS, long long* opener_BHQS, long long sequence,
                  const BoundaryScanDims& dims)
      : start_QS(start_BHQS + sequence * (dims.tokens + 1) * dims.capacity),
        opener_QS(opener_BHQS + sequence * (dims.tokens + 1) * dims.capacity),
        slots(static_cast<int>(dims.capacity)) {}

  /// Slot `lane` of row 0: no token seen yet, no segment.
  __device__ void write_empty(int lane) const {
    if (lane >= slots) return;
    start_QS[lane] = -1;
    opener_QS[lane] = -1;
  }

  /// Slot `lane` of row q (the query after q tokens).
  __device__ void write(const Cache& cache, int q, int lane) const {
    if (lane >= slots) return;
    const long long at = static_cast<long long>(q) * slots + lane;
    start_QS[at] = lane < cache.alive ? cache.mine.position : (lane == cache.alive ? 0 : -1);
    opener_QS[at] = lane < cache.alive ? cache.mine.position : -1;
  }
};

/// The warp's (sequence, piece), or false for the block's warps past the last.
__device__ bool warp_piece(const BoundaryScanDims& dims, int pieces, long long& sequence, int& piece) {
  const long long warp = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  sequence = warp / pieces;
  piece = static_cast<int>(warp % pieces);
  return sequence < dims.batch * dims.heads;
}

/// Each piece's summary: the cache it ends with from an empty one (the last piece needs none).
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    scan_pieces_kernel(const float* __restrict__ u_BTH, Slot* __restrict__ summaries, BoundaryScanDims dims,
                       int piece_tokens, int pieces) {
  long long sequence = 0;
  int piece = 0;
  if (!warp_piece(dims, pieces, sequence, piece) || piece == pieces - 1) return;  // whole warps leave
  const int lane = static_cast<int>(threadIdx.x % 32);
  const Sequence s(u_BTH, sequence, dims);
  Cache cache;
  s.scan(cache, piece * piece_tokens, min(s.tokens, (piece + 1) * piece_tokens), lane, [](int) {});
  // Lanes past the alive ones may hold a stale boundary (lane 31 after an eviction at 32 slots).
  summaries[(sequence * pieces + piece) * 32 + lane] = lane < cache.alive ? cache.mine : Slot{0.f, -1};
}

/// A piece's rows: its cache at its start from the summaries before it, then its tokens.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    scan_rows_kernel(const float* __restrict__ u_BTH, const Slot* __restrict__ summaries,
                     long long* __restrict__ start_BHQS, long long* __restrict__ opener_BHQS,
                     BoundaryScanDims dims, int piece_tokens, int pieces) {
  long long sequence = 0;
  int piece = 0;
  if (!warp_piece(dims, pieces, sequence, piece)) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const Sequence s(u_BTH, sequence, dims);
  const Rows rows(start_BHQS, opener_BHQS, sequence, dims);
  Cache cache;
  const Slot* summary_of = summaries + sequence * pieces * 32 + lane;
  Slot next = piece > 0 ? summary_of[0] : Slot{};
  for (int before = 0; before < piece; ++before) {
    const Slot summary = next;  // the next one loads while this one is inserted
    if (before + 1 < piece) next = summary_of[(before + 1) * 32];
    const int alive = __popc(__ballot_sync(kAllLanes, summary.position >= 0));
    for (int i = alive - 1; i >= 0; --i)
      s.insert(cache, __shfl_sync(kAllLanes, summary.score, i), __shfl_sync(kAllLanes, summary.position, i),
               lane);
  }
  if (piece == 0) rows.write_empty(lane);
  s.scan(cache, piece * piece_tokens, min(s.tokens, (piece + 1) * piece_tokens), lane,
         [&](int position) { rows.write(cache, position + 1, lane); });
}

/// Tokens per piece: a power of two from 64 near √(T · max(M − 1, 1)), where a piece's own tokens and the
/// insertions of the summaries before it (up to M − 1 each) take about as long.
int piece_tokens(const BoundaryScanDims& dims) {
  const double balance = std::sqrt(static_cast<double>(dims.tokens) *
                                   static_cast<double>(std::max<int64_t>(dims.capacity - 1, 1)));
  int tokens = 64;
  while (tokens < balance && tokens < dims.tokens)
    tokens *= 2;
  return tokens;
}

}  // namespace

int64_t boundary_scan_workspace_bytes(const BoundaryScanDims& dims) {
  const int64_t pieces = std::max<int64_t>((dims.tokens + piece_tokens(dims) - 1) / piece_tokens(dims), 1);
  return dims.batch * dims.heads * pieces * 32 * static_cast<int64_t>(sizeof(Slot));
}

const char* boundary_scan(const float* u, int64_t* start, int64_t* opener, void* workspace,
                          const BoundaryScanDims& dims, void* stream) {
  const long long sequences = dims.batch * dims.heads;
  if (sequences == 0) return nullptr;
  const int tokens = piece_tokens(dims);
  const int pieces = static_cast<int>(std::max<int64_t>((dims.tokens + tokens - 1) / tokens, 1));
  const auto blocks = static_cast<unsigned>((sequences * pieces + kWarpsPerBlock - 1) / kWarpsPerBlock);
  auto* summaries = static_cast<Slot*>(workspace);
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  if (pieces > 1)
    scan_pieces_kernel<<<blocks, kWarpsPerBlock * 32, 0, cuda_stream>>>(u, summaries, dims, tokens, pieces);
  scan_rows_kernel<<<blocks, kWarpsPerBlock * 32, 0, cuda_stream>>>(
      u, summaries, reinterpret_cast<long long*>(start), reinterpret_cast<long long*>(opener), dims, tokens,
      pieces);
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace dla::memory::kernels
