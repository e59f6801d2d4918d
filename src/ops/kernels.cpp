// The process-wide kernel choice, read once from DLA_KERNELS unless set explicitly.
#include "dla/ops/kernels.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "dla/util/error.h"

namespace dla::ops {
namespace {

constexpr int kUnset = -1;
std::atomic<int> g_choice{kUnset};

}  // namespace

KernelChoice parse_kernel_choice(std::string_view text, std::string_view source) {
  if (text == "auto") return KernelChoice::automatic;
  if (text == "aten") return KernelChoice::aten;
  if (text == "fused") return KernelChoice::fused;
  throw UserError(fmt::format("{}: expected auto, aten or fused, got '{}'", source, text));
}

KernelChoice kernel_choice() {
  int choice = g_choice.load();
  if (choice == kUnset) {
    const char* env = std::getenv("DLA_KERNELS");
    const KernelChoice parsed =
        env == nullptr || *env == '\0' ? KernelChoice::automatic : parse_kernel_choice(env, "DLA_KERNELS");
    choice = static_cast<int>(parsed);
    g_choice.store(choice);
  }
  return static_cast<KernelChoice>(choice);
}

void set_kernel_choice(KernelChoice choice) {
  g_choice.store(static_cast<int>(choice));
}

bool use_fused_kernels(const at::Tensor& like) {
  switch (kernel_choice()) {
    case KernelChoice::aten:
      return false;
    case KernelChoice::fused:
      return true;
    case KernelChoice::automatic:
      break;
  }
  return like.is_cuda();
}

}  // namespace dla::ops
