// The CUDA kernels of ops::cross_entropy (dla/ops/cross_entropy.h) behind a plain C++ interface, so that
// only the .cu file is compiled by nvcc. logits and d_logits are contiguous [rows, vocab] device buffers of
// float32 or bf16 (16-byte aligned, vocab a multiple of 8), labels int64 [rows], row_loss and logsumexp
// float32 [rows]; `stream` is a cudaStream_t.
#pragma once

#include <cstdint>

namespace dla::ops::kernels {

struct CrossEntropyDims {
  int64_t rows;
  int64_t vocab;
  int64_t ignore_label;
  bool bf16;  ///< logits and d_logits are bf16, else float32
};

/// row_loss[n] = logsumexp(logits[n]) − logits[n, label_n] (0 for an ignored row, NaN for a label outside
/// [0, vocab)), and logsumexp[n]. nullptr on success, else the CUDA error's text.
const char* cross_entropy_forward(const void* logits, const int64_t* labels, float* row_loss,
                                  float* logsumexp, const CrossEntropyDims& dims, void* stream);

/// d_logits[n, v] = d_loss · (exp(logits[n, v] − logsumexp[n]) − [v = label_n]) / *counted for the rows not
/// ignored, 0 for ignored rows. d_loss and counted (the rows not ignored) are float32 device scalars.
/// nullptr on success, else the CUDA error's text.
const char* cross_entropy_backward(const void* logits, const int64_t* labels, const float* logsumexp,
                                   const float* d_loss, const float* counted, void* d_logits,
                                   const CrossEntropyDims& dims, void* stream);

}  // namespace dla::ops::kernels
