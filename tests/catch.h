// Catch2 v2 (Debian 12) and v3 under one include. Tests include this, never Catch2 directly.
#pragma once

#if DLA_CATCH2_MAJOR >= 3
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
namespace dla::test {
inline auto has_substr(const std::string& text) {
  return Catch::Matchers::ContainsSubstring(text);
}
}  // namespace dla::test
#else
#include <catch2/catch.hpp>
namespace dla::test {
inline auto has_substr(const std::string& text) {
  return Catch::Matchers::Contains(text);
}
}  // namespace dla::test
#endif
