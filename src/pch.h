// Precompiled header: the heavy, stable headers most translation units include.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
