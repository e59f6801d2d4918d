// Copies from global to shared memory that do not pass through registers (cp.async, sm_80+): a block starts
// all of a phase's copies, computes meanwhile, and waits only when it needs them.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "shared_address.cuh"

namespace dla::ops::kernels {

/// Starts copying 16 bytes from global src to shared dst (both 16-byte aligned); zeros instead when !valid.
__device__ inline void copy_async(float* dst, const float* src, bool valid = true) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}

/// Starts copying kBytes (4, 8 or 16; src and dst aligned to them) from global src to shared dst; zeros
/// instead when !valid.
template <int kBytes>
__device__ void copy_bytes_async(void* dst, const void* src, bool valid = true) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16);
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared_address(dst)), "l"(src),
                 "n"(kBytes), "r"(valid ? kBytes : 0)
                 : "memory");
}

/// Starts copying one float (4-byte aligned) from global src to shared dst.
__device__ inline void copy_float_async(float* dst, const float* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(dst)), "l"(src) : "memory");
}

/// Closes the group of copies this thread started since the last commit.
__device__ inline void commit_copies() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

/// Starts copying a [rows, cols] tile of contiguous rows src_ld apart (both 16-byte aligned, cols a multiple
/// of 16 bytes' worth) into shared rows dst_ld apart, in 16-byte pieces the block's kThreads threads share.
/// src_ld's type (int or size_t) sets the width of the row offsets.
template <int kThreads, class T, class Ld>
__device__ void copy_tile_async(T* dst, int dst_ld, const T* src, Ld src_ld, int rows, int cols) {
  constexpr int kPiece = 16 / sizeof(T);
  const int per_row = cols / kPiece;
  for (int i = threadIdx.x; i < rows * per_row; i += kThreads) {
    const int row = i / per_row, column = (i % per_row) * kPiece;
    copy_bytes_async<16>(dst + row * dst_ld + column, src + row * src_ld + column);
  }
}

/// Calls piece(row, part) for this thread's share of the 16-byte pieces of a [rows, 4 · per_row] float block,
/// part the piece's first column: piece row · per_row + part / 4 goes to thread (that index) mod kThreads.
/// Where per_row divides kThreads each thread keeps its part, so there is one division, not one per piece.
template <int kThreads, class Piece>
__device__ void for_each_piece(int per_row, int rows, Piece piece) {
  if (per_row <= 0) return;
  if (kThreads % per_row == 0) {
    const int part = 4 * (static_cast<int>(threadIdx.x) % per_row), row_step = kThreads / per_row;
    for (int row = static_cast<int>(threadIdx.x) / per_row; row < rows; row += row_step)
      piece(row, part);
  } else {
    for (int i = threadIdx.x; i < rows * per_row; i += kThreads)
      piece(i / per_row, 4 * (i % per_row));
  }
}

/// Starts dst (rows dst_ld apart) = `columns` columns from `column` of a [rows, row_length] row-major global
/// matrix, zeros for those from row_length on; columns, column and row_length multiples of 4. The block's
/// kThreads threads share the copies (for_each_piece).
template <int kThreads>
__device__ void copy_columns_async(float* dst, int dst_ld, const float* src, int row_length, int column,
                                   int columns, int rows) {
  for_each_piece<kThreads>(columns / 4, rows, [&](int row, int part) {
    const float* row_start = src + static_cast<size_t>(row) * row_length;
    const bool inside = column + part < row_length;
    copy_async(dst + row * dst_ld + part, inside ? row_start + column + part : row_start, inside);
  });
}

/// Starts dst (rows dst_ld apart) = a [rows, columns] row-major global matrix, columns a multiple of 4.
template <int kThreads>
__device__ void copy_rows_async(float* dst, int dst_ld, const float* src, int rows, int columns) {
  copy_columns_async<kThreads>(dst, dst_ld, src, columns, 0, columns, rows);
}

/// Starts dst[i] = src[i] for i < n, any n.
template <int kThreads>
__device__ void copy_floats_async(float* dst, const float* src, int n) {
  for (int i = threadIdx.x; i < n; i += kThreads)
    copy_float_async(dst + i, src + i);
}

}  // namespace dla::ops::kernels
