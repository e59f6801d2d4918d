// Which implementation the chunkwise ops run: dla's fused path (hand-written backward, the sequential state
// pass as one CUDA kernel per direction) or the composition of LibTorch ops that autograd differentiates.
// Both compute the same function; the LibTorch-op path is the readable reference.
#pragma once

#include <string_view>

#include <ATen/core/Tensor.h>

namespace dla::ops {

enum class KernelChoice {
  automatic,  ///< fused on CUDA tensors, LibTorch ops on the CPU
  aten,       ///< LibTorch ops everywhere
  fused,      ///< the fused path everywhere (on the CPU its state pass is a loop of LibTorch ops)
};

/// The process-wide choice: set_kernel_choice's, else the environment variable DLA_KERNELS (auto, aten or
/// fused), else automatic. A bad DLA_KERNELS throws dla::UserError naming the variable.
KernelChoice kernel_choice();
void set_kernel_choice(KernelChoice choice);

/// "auto", "aten" or "fused"; anything else throws dla::UserError naming `source` (a flag or variable).
KernelChoice parse_kernel_choice(std::string_view text, std::string_view source);

/// Whether an op on tensors like `like` takes the fused path under kernel_choice().
bool use_fused_kernels(const at::Tensor& like);

}  // namespace dla::ops
