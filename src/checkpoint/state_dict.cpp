// Loading named tensors into a module.
#include "dla/checkpoint/state_dict.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::checkpoint {
namespace {

std::string shape_text(at::IntArrayRef sizes) {
  return fmt::format("[{}]", fmt::join(sizes, ", "));
}

}  // namespace

void load_parameters(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                     const std::string& source) {
  const auto params = module.named_parameters(/*recurse=*/true);
  std::vector<std::string> problems;
  for (const auto& item : params) {
    const auto it = tensors.find(item.key());
    if (it == tensors.end()) {
      problems.push_back("missing tensor '" + item.key() + "' " + shape_text(item.value().sizes()));
    } else if (it->second.sizes() != item.value().sizes()) {
      problems.push_back(fmt::format("'{}' has shape {} but the model expects {}", item.key(),
                                     shape_text(it->second.sizes()), shape_text(item.value().sizes())));
    }
  }
  for (const auto& [name, tensor] : tensors) {
    if (params.find(name) == nullptr) problems.push_back("unexpected tensor '" + name + "'");
  }
  if (!problems.empty()) {
    std::string message = source + ": the tensors do not match the model:";
    for (const auto& p : problems)
      message += "\n  " + p;
    throw UserError(message);
  }
  at::NoGradGuard no_grad;
  for (auto& item : params)
    item.value().copy_(tensors.at(item.key()));
}

}  // namespace dla::checkpoint
