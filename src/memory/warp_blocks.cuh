// The building blocks of the slot kernels that work one chunk per thread block (slot_gradients.cu,
// slot_reads.cu): a warp's 32 × 32 block of a tensor-core product (../ops/warp_block.cuh, TF32 or bf16 for
// compact states), and a ring of shared stage buffers that streams operands in by asynchronous copies.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "../ops/async_copy.cuh"
#include "../ops/bf16_fragments.cuh"
#include "../ops/warp_block.cuh"

namespace dla::memory::kernels {

using dla::ops::kernels::clear;
using dla::ops::kernels::commit_copies;
using dla::ops::kernels::diagonal_sum;
using dla::ops::kernels::kBlock;
using dla::ops::kernels::multiply_accumulate;
using dla::ops::kernels::multiply_accumulate_bf16;
using dla::ops::kernels::multiply_accumulate_transposed;
using dla::ops::kernels::Operand;
using dla::ops::kernels::store;
using dla::ops::kernels::Stored;
using dla::ops::kernels::wait_copies;
using dla::ops::kernels::WarpBlock;

/// dst (rows ld apart) = a [rows, columns] row-major global float matrix rounded to bf16 (the left operand of
/// the bf16 products); columns and ld multiples of 4. The block's kThreads threads share the work.
template <int kThreads>
__device__ void load_as_bf16(__nv_bfloat16* dst, int ld, const float* __restrict__ src, int rows,
                             int columns) {
  for (int i = threadIdx.x; i < rows * columns / 4; i += kThreads) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(src) + i);
    const int row = 4 * i / columns, column = 4 * i % columns;
    *reinterpret_cast<uint2*>(dst + row * ld + column) =
        make_uint2(dla::ops::kernels::bf16_pair(x.x, x.y), dla::ops::kernels::bf16_pair(x.z, x.w));
  }
}

/// Starts dst = `columns` columns from `column` of a [rows, row_length] row-major global matrix of T (float,
/// or bf16 for compact states), dst's rows dst_ld elements apart; in floats, every count must be a multiple
/// of 4 (of 8 bf16). The copies move bytes: two bf16 travel as one float.
template <int kThreads, class T>
__device__ void copy_state_columns_async(T* dst, int dst_ld, const T* src, int row_length, int column,
                                         int columns, int rows) {
  constexpr int kPerFloat = static_cast<int>(sizeof(float) / sizeof(T));
  dla::ops::kernels::copy_columns_async<kThreads>(reinterpret_cast<float*>(dst), dst_ld / kPerFloat,
                                                  reinterpret_cast<const float*>(src), row_length / kPerFloat,
                                                  column / kPerFloat, columns / kPerFloat, rows);
}

/// The copies of a stage's kColumns columns of T (bf16 or float; 16-byte pieces) from the rows of a row-major
/// global matrix into shared rows kLd elements apart, the same for every stage of a ring. Each thread's rows
/// and offsets are set once, so that a stage's copies cost an add and a cp.async each: with per-stage index
/// arithmetic, the slot-gradient kernels were issue-bound on it.
template <int kThreads, class T, int kColumns, int kLd>
class StageCopy {
  static constexpr int kPieceElements = 16 / static_cast<int>(sizeof(T));
  static constexpr int kPerRow = kColumns / kPieceElements;
  static constexpr int kRowStep = kThreads / kPerRow;
  static_assert(kColumns % kPieceElements == 0 && kThreads % kPerRow == 0 && kLd % kPieceElements == 0);

 public:
  /// Copies of `rows` rows, row_length elements apart in global memory (a multiple of 16 bytes).
  __device__ StageCopy(int rows, int row_length)
      : rows_(rows),
        first_row_(static_cast<int>(threadIdx.x) / kPerRow),
        part_((static_cast<int>(threadIdx.x) % kPerRow) * kPieceElements),
        row_length_(row_length) {}

  /// Starts dst = the kColumns columns at src (the first row's first column) of each row.
  __device__ void start(T* dst, const T* src) const {
    const T* from = src + static_cast<size_t>(first_row_) * row_length_ + part_;
    T* to = dst + first_row_ * kLd + part_;
    const size_t from_step = static_cast<size_t>(kRowStep) * row_length_;
    for (int row = first_row_; row < rows_; row += kRowStep, from += from_step, to += kRowStep * kLd)
      dla::ops::kernels::copy_async(reinterpret_cast<float*>(to), reinterpret_cast<const float*>(from));
  }

 private:
  int rows_, first_row_, part_, row_length_;
};

/// Bit s set where slot s is live at the start of the chunk at `chunk` (its n-th of a [BH, N] mask): live in
/// the previous chunk's transitions, and none at the first. Without masks, every one of the S slots.
__device__ inline unsigned slots_live_at_start(const unsigned* live_slots, size_t chunk, int n, int S) {
  if (live_slots == nullptr) return (1u << S) - 1u;
  return n > 0 ? __ldg(live_slots + chunk - 1) : 0u;
}

/// A stage of run_stages: the outer and inner index of a nested loop, counted without a division.
struct Stage {
  int outer = 0, inner = 0;

  __device__ void advance(int inner_count) {
    if (++inner == inner_count) {
      inner = 0;
      ++outer;
    }
  }
};

/// Runs the stages of a nested loop, outer_count × inner_count in order, in a ring of kBuffers shared
/// buffers: the copies of the next kBuffers − 1 stages (prefetch(stage, buffer)) are in flight while one
/// computes (compute(stage, buffer)). Every iteration commits one group of copies, empty past the last stage,
/// so that waiting for all but the newest kBuffers − 1 groups waits for the current stage's (and, at the
/// first, for what the kernel copied before). Returns when every thread's copies have landed, also those the
/// kernel started before (with no stages to run too), so that the caller may write over any of it.
template <int kBuffers, class Prefetch, class Compute>
__device__ void run_stages(int outer_count, int inner_count, Prefetch prefetch, Compute compute) {
  const int stages = outer_count * inner_count;
  Stage ahead, current;
  for (int k = 0; k < kBuffers - 1; ++k) {
    if (k < stages) {
      prefetch(ahead, k);
      ahead.advance(inner_count);
    }
    commit_copies();
  }
  for (int k = 0; k < stages; ++k) {
    if (k + kBuffers - 1 < stages) {
      prefetch(ahead, (k + kBuffers - 1) % kBuffers);
      ahead.advance(inner_count);
    }
    commit_copies();
    wait_copies<kBuffers - 1>();
    __syncthreads();
    compute(current, k % kBuffers);
    current.advance(inner_count);
    __syncthreads();  // the buffer is free for stage k + kBuffers
  }
  wait_copies<0>();
  __syncthreads();
}

}  // namespace dla::memory::kernels
