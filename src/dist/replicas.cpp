// Broadcast and digest of model replicas.
#include "dla/dist/replicas.h"

#include "dla/util/hash.h"

namespace dla::dist {
namespace {

std::vector<at::Tensor> module_tensors(torch::nn::Module& module) {
  std::vector<at::Tensor> tensors = module.parameters();
  for (const auto& buffer : module.buffers())
    tensors.push_back(buffer);
  return tensors;
}

}  // namespace

void broadcast_module(Communicator& communicator, torch::nn::Module& module) {
  at::NoGradGuard no_grad;
  for (auto& tensor : module_tensors(module)) {
    // Broadcast works on dense contiguous tensors; parameters are, but a view would not write back.
    at::Tensor data = tensor.detach();
    communicator.broadcast(data, /*root=*/0);
  }
}

uint64_t module_digest(torch::nn::Module& module) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (const auto& tensor : module_tensors(module)) {
    const at::Tensor host = tensor.detach().to(at::kCPU).contiguous();
    hash = fnv1a64(host.const_data_ptr(), host.nbytes(), hash);
  }
  return hash;
}

void verify_replicas(Communicator& communicator, torch::nn::Module& module, std::string_view when) {
  const uint64_t digest = module_digest(module);
  const auto device =
      module.parameters().empty() ? at::Device(at::kCPU) : module.parameters().front().device();
  // Min and max of the digest over ranks are equal exactly when all ranks agree.
  at::Tensor low =
      at::full({1}, static_cast<int64_t>(digest), at::TensorOptions().dtype(at::kLong).device(device));
  at::Tensor high = low.clone();
  communicator.all_reduce(low, ReduceOp::min);
  communicator.all_reduce(high, ReduceOp::max);
  if (low.item<int64_t>() != high.item<int64_t>()) {
    throw CommunicationError(
        fmt::format("rank {}: the model replicas differ across ranks {} (this rank's weight digest {:016x}); "
                    "data-parallel "
                    "training needs identical weights on every rank",
                    communicator.rank(), when, digest));
  }
  spdlog::debug("rank {}: weights identical on all ranks {} (digest {:016x})", communicator.rank(), when,
                digest);
}

}  // namespace dla::dist
