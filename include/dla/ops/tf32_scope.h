// TF32 for the float32 matmuls of an op whose inputs come in 16 bits.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::ops {

/// Whether an op with this input may multiply in TF32: a CUDA tensor of 16 bits (bf16 or fp16, as under
/// autocast). Their 8 or 11 mantissa bits fit TF32's 10-bit operands nearly whole, and fla's Triton dots
/// round the same way on Hopper. Float32 inputs keep full float32 products.
bool tf32_suits(const at::Tensor& input);

/// While alive, cuBLAS and dla's tensor-core kernels may run float32 matmuls in TF32 when `enable` is true;
/// the previous setting comes back after. With `enable` false it changes nothing.
class Tf32Scope {
 public:
  explicit Tf32Scope(bool enable);
  ~Tf32Scope();
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_;
};

/// Whether float32 matmuls may run in TF32 now (LibTorch's allow_tf32 for cuBLAS, which Tf32Scope sets).
bool tf32_allowed();

}  // namespace dla::ops
