// CUDA kernel of slot_of_keys (key_slots_kernel.h): a thread per key, scanning its row's slots from the
// newest.
#include <cuda_runtime.h>

#include <algorithm>

#include "../ops/cuda_launch.cuh"
#include "key_slots_kernel.h"

namespace dla::memory::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    slot_of_keys_kernel(const int64_t* __restrict__ start_rows, const int64_t* __restrict__ keys,
                        int64_t* __restrict__ slot, KeySlotDims d) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < d.count;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    int64_t rest = i, row = 0, key_offset = 0;
    for (int dim = d.dims - 1; dim >= 0; --dim) {
      const int64_t index = rest % d.size[dim];
      rest /= d.size[dim];
      row += index * d.row_stride[dim];
      key_offset += index * d.key_stride[dim];
    }
    const int64_t key = __ldg(keys + key_offset);
    int64_t found = -1;
    for (int64_t s = 0; s < d.slots; ++s) {
      const int64_t start = __ldg(start_rows + row + s * d.slot_stride);
      if (start >= 0 && start <= key) {
        found = s;
        break;
      }
    }
    slot[i] = found;
  }
}

}  // namespace

const char* slot_of_keys(const int64_t* start_rows, const int64_t* keys, int64_t* slot,
                         const KeySlotDims& dims, void* stream) {
  if (dims.count == 0) return nullptr;
  const int64_t blocks = std::min<int64_t>((dims.count + kThreads - 1) / kThreads, int64_t{1} << 20);
  slot_of_keys_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      start_rows, keys, slot, dims);
  return dla::ops::kernels::launched();
}

}  // namespace dla::memory::kernels
