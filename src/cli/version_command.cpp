// `dla version`: what this binary is and what it can use on this machine.
#include <dlfcn.h>

#include <iostream>

#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include "dla/build_info.h"
#include "dla/cli/command.h"

#ifdef DLA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace dla::cli {
namespace {

// NCCL's version from the library LibTorch loaded (or would load); nullopt when it cannot be found.
std::optional<std::string> nccl_version() {
  void* nccl = dlopen("libnccl.so.2", RTLD_LAZY | RTLD_NOLOAD);
  if (nccl == nullptr) nccl = dlopen("libnccl.so.2", RTLD_LAZY);
  if (nccl == nullptr) return std::nullopt;
  using GetVersion = int (*)(int*);
  auto get_version = reinterpret_cast<GetVersion>(dlsym(nccl, "ncclGetVersion"));
  int code = 0;
  if (get_version == nullptr || get_version(&code) != 0) return std::string("unknown version");
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return fmt::format("{}.{}.{}", code / 10000, (code % 10000) / 100, code % 100);
}

int print_version() {
  std::cout << fmt::format("dla {} (commit {}, {} build)\n", DLA_VERSION, DLA_GIT_COMMIT, DLA_BUILD_TYPE);
  std::cout << fmt::format("LibTorch {}\n", TORCH_VERSION);
#ifdef DLA_WITH_CUDA
  const bool cuda_built = true;
#else
  const bool cuda_built = false;
#endif
  const bool cuda_available = torch::cuda::is_available();
  std::cout << "CUDA: "
            << (cuda_available
                    ? "available"
                    : (cuda_built ? "built in, but no usable GPU or driver"
                                  : "not available (LibTorch without CUDA; dla's kernels not built)"))
            << "\n";
  if (cuda_built) {
    const auto nccl = nccl_version();
    std::cout << "NCCL: " << (nccl ? "available, " + *nccl : std::string("not found (libnccl.so.2)")) << "\n";
  } else {
    std::cout << "NCCL: not available (CPU build; multi-process runs use Gloo)\n";
  }
  const int64_t num_gpus = cuda_available ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  std::cout << "GPUs: " << num_gpus << "\n";
#ifdef DLA_WITH_CUDA
  for (int64_t i = 0; i < num_gpus; ++i) {
    const auto* props = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(i));
    std::cout << fmt::format("  cuda:{}  {}  {:.1f} GiB  sm_{}{}\n", i, props->name,
                             static_cast<double>(props->totalGlobalMem) / (1 << 30), props->major,
                             props->minor);
  }
#endif
  return kExitOk;
}

}  // namespace

void add_version_command(CLI::App& root, CommandList& commands) {
  auto* app = root.add_subcommand("version", "Print the versions of dla and LibTorch, and the GPUs seen");
  commands.push_back({app, print_version});
}

}  // namespace dla::cli
