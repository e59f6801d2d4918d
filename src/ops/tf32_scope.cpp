#include "dla/ops/tf32_scope.h"

#include <ATen/Context.h>

namespace dla::ops {

bool tf32_suits(const at::Tensor& input) {
  return input.defined() && input.is_cuda() && at::elementSize(input.scalar_type()) == 2;
}

Tf32Scope::Tf32Scope(bool enable) : previous_(tf32_allowed()) {
  if (enable) at::globalContext().setAllowTF32CuBLAS(true);
}

Tf32Scope::~Tf32Scope() {
  at::globalContext().setAllowTF32CuBLAS(previous_);
}

bool tf32_allowed() {
  return at::globalContext().allowTF32CuBLAS();
}

}  // namespace dla::ops
