// The language-model loss: mean cross-entropy of logits against labels, computed in float32 whatever the
// logits' dtype. On CUDA (float32 or bfloat16 logits) it is one kernel per direction that reads the logits
// where they are and never forms a float32 copy of them (for a 32000-token vocabulary at 8 × 2048 tokens
// such a copy is 2 GiB, and its gradient another); elsewhere, and under DLA_KERNELS=aten, LibTorch's
// cross_entropy_loss on the logits cast to float32. Shapes: N rows (tokens), V the vocabulary.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace dla::ops {

/// The label value whose rows count neither in the loss nor in the mean (LibTorch's default).
constexpr int64_t kIgnoreLabel = -100;

/// mean over the rows whose label is not kIgnoreLabel of logsumexp(logits_NV[n]) − logits_NV[n, label_n],
/// a float32 scalar (NaN when every row is ignored). logits_NV is [N, V] floating, labels_N int64 [N] on
/// its device. Differentiable in logits_NV; the gradient has the logits' dtype.
at::Tensor cross_entropy(const at::Tensor& logits_NV, const at::Tensor& labels_N);

/// Whether cross_entropy runs its CUDA kernels for these logits: float32 or bfloat16 on a CUDA device, rows
/// contiguous and 16-byte aligned, V a multiple of 8, and the kernel choice not aten.
bool cross_entropy_uses_cuda_kernel(const at::Tensor& logits_NV);

}  // namespace dla::ops
