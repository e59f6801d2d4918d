// The CUDA kernel of the DLA boundary scan (dla/memory/segments.h, spec/dla.md §3.2) behind a plain C++
// interface, so that only the .cu file is compiled by nvcc. It writes the slot tables of dla_segments for a
// fresh cache on the GPU, so the forward pass neither copies the scores to the host nor waits for the scan.
#pragma once

#include <cstdint>

namespace dla::memory::kernels {

struct BoundaryScanDims {
  int64_t batch;      ///< B
  int64_t tokens;     ///< T
  int64_t heads;      ///< H
  int64_t capacity;   ///< S = M: the slots of a row; at most M − 1 boundaries are alive
  float threshold;    ///< τ: token t ≥ 1 is a candidate when u ≥ τ
  bool evict_lowest;  ///< MergeRule::lowest (else the oldest boundary is evicted)
};

/// The most slots one warp scans: a lane per alive boundary plus the candidate.
constexpr int64_t kMaxScanCapacity = 32;

/// The bytes of device memory boundary_scan needs beside its outputs for these dims.
int64_t boundary_scan_workspace_bytes(const BoundaryScanDims& dims);

/// u: [B, T, H] float32 on the device; start and opener: [B, H, T + 1, S] int64 on the device, every entry
/// written; workspace: boundary_scan_workspace_bytes(dims) on the device. nullptr on success, else the CUDA
/// error's text. `stream` is a cudaStream_t.
const char* boundary_scan(const float* u, int64_t* start, int64_t* opener, void* workspace,
                          const BoundaryScanDims& dims, void* stream);

}  // namespace dla::memory::kernels
