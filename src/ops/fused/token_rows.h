// How the per-chunk kernels' launchers (chunk_stages.cpp, chunk_gradients.cpp) hand tensors to them: the
// dims of the op and its [B, T, H, ·] inputs as TokenRows.
#pragma once

#if defined(DLA_WITH_CUDA)
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dla/ops/kernel_buffers.h"
#include "kernels.h"

namespace dla::ops::fused {

/// The dims of a [B, T, H, K] input (q or k) with value_dim V.
inline kernels::ChunkStageDims dims_of(const at::Tensor& x_BTHK, int64_t value_dim, int64_t chunk_size) {
  return {x_BTHK.size(0),
          x_BTHK.size(1),
          x_BTHK.size(2),
          chunk_size,
          x_BTHK.size(3),
          value_dim,
          x_BTHK.scalar_type() == at::kBFloat16};
}

/// x as the kernels read it: in place when its last dim is contiguous and every row starts aligned for
/// four-element loads, else a contiguous copy, which `kept` holds for the launch.
inline kernels::TokenRows token_rows(const at::Tensor& x_BTHD, at::Tensor& kept) {
  const int64_t vector = 4;
  const bool in_place =
      x_BTHD.stride(3) == 1 && x_BTHD.stride(0) % vector == 0 && x_BTHD.stride(1) % vector == 0 &&
      x_BTHD.stride(2) % vector == 0 &&
      reinterpret_cast<std::uintptr_t>(x_BTHD.data_ptr()) % (vector * x_BTHD.element_size()) == 0;
  kept = in_place ? x_BTHD : kernel_buffer(x_BTHD);
  return {kept.data_ptr(), kept.stride(0), kept.stride(1), kept.stride(2)};
}

}  // namespace dla::ops::fused
#endif
