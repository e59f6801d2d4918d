// Copying named tensors into a module's parameters, with errors that name every mismatch.
#pragma once

#include <map>
#include <string>

#include <torch/nn/module.h>

namespace dla::checkpoint {

/// Copies `tensors` into the parameters of `module` with the same names (casting dtype, keeping device).
/// Every parameter must be given and every tensor used, with the same shape; otherwise throws
/// dla::UserError listing the missing, unexpected and mis-shaped names, and changes nothing. `source`
/// names the origin (a file) in messages.
void load_parameters(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                     const std::string& source);

}  // namespace dla::checkpoint
