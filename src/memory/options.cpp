// Derived sizes and checks of the memory options.
#include "dla/memory/options.h"

#include <charconv>

#include <fmt/format.h>

namespace dla::memory {

int64_t MemoryOptions::num_levels() const {
  switch (policy) {
    case PolicyKind::single:
      return 1;
    case PolicyKind::dla:
      return capacity + 1;
    case PolicyKind::fenwick: {
      int64_t slots = 1;
      while ((int64_t{1} << slots) < max_length)
        ++slots;
      return slots + 1;
    }
  }
  return 1;
}

int64_t MemoryOptions::boundary_stride() const {
  if (boundary == "info") return 0;
  constexpr std::string_view prefix = "stride:";
  if (boundary.starts_with(prefix)) {
    int64_t stride = 0;
    const char* first = boundary.data() + prefix.size();
    const char* last = boundary.data() + boundary.size();
    const auto [end, error] = std::from_chars(first, last, stride);
    if (error == std::errc() && end == last && stride >= 1) return stride;
  }
  throw config::ConfigError(
      "model.memory.boundary",
      fmt::format("expected `info` or `stride:K` with a whole K >= 1, got `{}`", boundary));
}

}  // namespace dla::memory
