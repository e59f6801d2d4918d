// The device a rank computes on: on CUDA, each rank of a node owns the GPU of its local rank.
#pragma once

#include <c10/core/Device.h>

#include "dla/dist/environment.h"

namespace dla::dist {

/// The CPU, or the GPU of `env.local_rank` (made the current device). A local rank without a GPU of its own
/// is a UserError.
c10::Device rank_device(bool cuda, const DistEnvironment& env);

}  // namespace dla::dist
