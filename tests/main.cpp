// Test runner entry. Catch2 v3 links its own main (Catch2WithMain); v2 needs one defined here.
#if DLA_CATCH2_MAJOR < 3
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif
