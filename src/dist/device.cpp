// Choosing a rank's device.
#include "dla/dist/device.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include "dla/util/error.h"

namespace dla::dist {

c10::Device rank_device(bool cuda, const DistEnvironment& env) {
  if (!cuda) return c10::Device(c10::kCPU);
  const auto gpus = static_cast<int>(torch::cuda::device_count());
  if (env.local_rank >= gpus) {
    throw UserError(
        fmt::format("rank {}: local rank {} has no GPU of its own ({} visible); start at most {} "
                    "workers per node, or use the CPU",
                    env.rank, env.local_rank, gpus, gpus));
  }
  const c10::Device device(c10::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(device);
  return device;
}

}  // namespace dla::dist
