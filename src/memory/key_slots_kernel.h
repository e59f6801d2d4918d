// The CUDA kernel of slot_of_keys (dla/memory/segments.h) behind a plain C++ interface, so that only the .cu
// file is compiled by nvcc. The LibTorch form compares every key with every slot's start and reduces over a
// [..., N, S] grid; the kernel scans each row's slots in registers and writes only the [..., N] result.
#pragma once

#include <cstdint>

namespace dla::memory::kernels {

/// The most dims of the broadcast result the kernel takes.
constexpr int kMaxKeySlotDims = 6;

/// The result's shape and, for each of its dims, the element strides of the start rows and the keys broadcast
/// to it (0 where broadcast).
struct KeySlotDims {
  int dims;
  int64_t size[kMaxKeySlotDims];
  int64_t row_stride[kMaxKeySlotDims];
  int64_t key_stride[kMaxKeySlotDims];
  int64_t slot_stride;  ///< between a row's slots
  int64_t slots;        ///< S
  int64_t count;        ///< elements of the result
};

/// slot[i] = the first slot s of key i's row with 0 ≤ start[s] ≤ key, else −1; the result is contiguous.
/// nullptr on success, else the CUDA error's text. `stream` is a cudaStream_t.
const char* slot_of_keys(const int64_t* start_rows, const int64_t* keys, int64_t* slot,
                         const KeySlotDims& dims, void* stream);

}  // namespace dla::memory::kernels
