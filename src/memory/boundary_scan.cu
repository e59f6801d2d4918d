// CUDA kernel of the DLA boundary scan (spec/dla.md §3.2; the host version is BoundaryCache::scan). One warp
// scans one (batch, head) sequence token by token. Lane i holds the i-th newest alive boundary (its score and
// position), so a candidate joining is one shuffle up; an overflow evicts the oldest (the last lane) or the
// lowest score, found by a warp min-reduction of order-preserving keys (ties go to the older boundary, as on
// the host), and the lanes behind it shuffle down. After each token lane i writes slot i of the next query's
// row: boundary i while i < alive, then token 0's segment, then empty slots (−1). The scan is one dependent
// chain per sequence, so its length sets the kernel's time: which of 32 tokens are candidates is one ballot,
// and a token that is not costs no shuffle.
#include <cuda_runtime.h>

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

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    boundary_scan_kernel(const float* __restrict__ u_BTH, long long* __restrict__ start_BHQS,
                         long long* __restrict__ opener_BHQS, BoundaryScanDims dims) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const long long sequence = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (sequence >= dims.batch * dims.heads) return;  // whole warps leave together
  const long long b = sequence / dims.heads, h = sequence % dims.heads;
  const int tokens = static_cast<int>(dims.tokens), slots = static_cast<int>(dims.capacity);
  const int max_alive = slots - 1;
  const float* u_T = u_BTH + b * dims.tokens * dims.heads + h;  // stride H between tokens
  long long* start_QS = start_BHQS + sequence * (dims.tokens + 1) * slots;
  long long* opener_QS = opener_BHQS + sequence * (dims.tokens + 1) * slots;

  Slot mine{0.f, -1};
  int alive = 0;
  if (lane < slots) {  // row 0: no token seen yet
    start_QS[lane] = -1;
    opener_QS[lane] = -1;
  }
  // Each lane holds one of the next 32 scores; the scan takes the candidates' from the lanes in turn. The
  // next 32 are loaded a group ahead, so that the chain never waits for memory.
  const auto score = [&](int position) {
    return position < tokens ? u_T[static_cast<long long>(position) * dims.heads] : 0.f;
  };
  float next_u = score(lane);
  for (int first = 0; first < tokens; first += 32) {
    const float u_lane = next_u;
    if (first + 32 < tokens) next_u = score(first + 32 + lane);
    const unsigned candidates =
        __ballot_sync(kAllLanes, first + lane < tokens && first + lane > 0 && u_lane >= dims.threshold);
    const int count = min(32, tokens - first);
    for (int j = 0; j < count; ++j) {
      const int position = first + j;
      if ((candidates >> j) & 1u) {  // the same for every lane of the warp
        const float u = __shfl_sync(kAllLanes, u_lane, j);
        const float moved_score = __shfl_up_sync(kAllLanes, mine.score, 1);
        const int moved_position = __shfl_up_sync(kAllLanes, mine.position, 1);
        mine = lane == 0 ? Slot{u, position} : Slot{moved_score, moved_position};
        ++alive;
        if (alive > max_alive) {
          // Evicting the oldest drops the last lane; evicting lane e moves the lanes behind it up by one.
          const int evicted = dims.evict_lowest ? lowest_lane(mine, lane, alive) : alive - 1;
          const float next_score = __shfl_down_sync(kAllLanes, mine.score, 1);
          const int next_position = __shfl_down_sync(kAllLanes, mine.position, 1);
          if (lane >= evicted) mine = Slot{next_score, next_position};
          alive = max_alive;
        }
      }
      if (lane < slots) {
        const long long row = static_cast<long long>(position + 1) * slots + lane;
        start_QS[row] = lane < alive ? mine.position : (lane == alive ? 0 : -1);
        opener_QS[row] = lane < alive ? mine.position : -1;
      }
    }
  }
}

}  // namespace

const char* boundary_scan(const float* u, int64_t* start, int64_t* opener, const BoundaryScanDims& dims,
                          void* stream) {
  const long long sequences = dims.batch * dims.heads;
  if (sequences == 0) return nullptr;
  const auto blocks = static_cast<unsigned>((sequences + kWarpsPerBlock - 1) / kWarpsPerBlock);
  boundary_scan_kernel<<<blocks, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      u, reinterpret_cast<long long*>(start), reinterpret_cast<long long*>(opener), dims);
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace dla::memory::kernels
