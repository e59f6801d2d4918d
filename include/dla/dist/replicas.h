// Keeping the model replicas of a data-parallel job identical: rank 0's weights are copied to every rank at
// the start, and a digest of the weights is compared across ranks whenever they must agree.
#pragma once

#include <cstdint>
#include <string_view>

#include <torch/nn/module.h>

#include "dla/dist/communicator.h"

namespace dla::dist {

/// Copies rank 0's parameters and buffers to every rank.
void broadcast_module(Communicator& communicator, torch::nn::Module& module);

/// FNV-1a 64 over the bytes of every parameter and buffer, in registration order.
uint64_t module_digest(torch::nn::Module& module);

/// Throws CommunicationError unless every rank's module has the same digest; `when` says at which point
/// of the run ("after the initial broadcast", "at step 100").
void verify_replicas(Communicator& communicator, torch::nn::Module& module, std::string_view when);

}  // namespace dla::dist
