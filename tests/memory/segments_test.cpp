// Tests of the slot search over segment tables: slot_of_keys against a direct scan of each row, on random
// tables with empty slots between used ones, including more slots than fit the narrow rank type.
#include "dla/memory/segments.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include <ATen/ATen.h>

#include "catch.h"

namespace {

/// Random start rows [rows, S] as the policies make them: used slots (start ≥ 0) strictly fall from the
/// newest to the oldest, with empty slots (−1) anywhere between them.
at::Tensor random_start_rows(int64_t rows, int64_t slots, int64_t tokens, std::mt19937& rng) {
  at::Tensor start = at::full({rows, slots}, -1, at::kLong);
  auto row_of = start.accessor<int64_t, 2>();
  std::uniform_int_distribution<int64_t> position(0, tokens - 1);
  std::bernoulli_distribution used(0.6);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int64_t> picks;
    for (int64_t s = 0; s < slots; ++s)
      picks.push_back(position(rng));
    std::sort(picks.rbegin(), picks.rend());
    int64_t last = tokens;
    for (int64_t s = 0; s < slots; ++s) {
      if (used(rng) && picks[s] < last) {
        row_of[r][s] = picks[s];
        last = picks[s];
      }
    }
  }
  return start;
}

}  // namespace

TEST_CASE("slot_of_keys finds the newest segment starting at or before each key", "[memory]") {
  const int64_t slots = GENERATE(1, 5, 300);
  CAPTURE(slots);
  std::mt19937 rng(static_cast<uint32_t>(11 + slots));
  const int64_t rows = 7, tokens = 2 * slots + 10;
  const at::Tensor start_RS = random_start_rows(rows, slots, tokens, rng);
  const at::Tensor keys_N = at::arange(tokens, at::kLong);

  const at::Tensor slot_RN = dla::memory::slot_of_keys(start_RS, keys_N);
  REQUIRE(slot_RN.sizes() == at::IntArrayRef({rows, tokens}));
  REQUIRE(slot_RN.scalar_type() == at::kLong);
  const auto start = start_RS.accessor<int64_t, 2>();
  const auto slot = slot_RN.accessor<int64_t, 2>();
  int64_t found = 0, missing = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t key = 0; key < tokens; ++key) {
      int64_t expected = -1;
      for (int64_t s = 0; s < slots && expected < 0; ++s) {
        if (start[r][s] >= 0 && start[r][s] <= key) expected = s;
      }
      CAPTURE(r, key);
      CHECK(slot[r][key] == expected);
      (expected >= 0 ? found : missing) += 1;
    }
  }
  // Both outcomes occur, so the check above covers them.
  CHECK(found > 0);
  CHECK(missing > 0);
}

TEST_CASE("on the GPU slot_of_keys equals the search on the CPU", "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the slot search kernel is not exercised on this machine");
    return;
  }
  std::mt19937 rng(23);
  SECTION("a row per query, every key, more slots than a narrow rank holds") {
    const int64_t slots = GENERATE(1, 5, 300);
    CAPTURE(slots);
    const int64_t rows = 7, tokens = 2 * slots + 10;
    const at::Tensor start_RS = random_start_rows(rows, slots, tokens, rng);
    const at::Tensor keys_N = at::arange(tokens, at::kLong);
    const at::Tensor on_gpu = dla::memory::slot_of_keys(start_RS.cuda(), keys_N.cuda());
    REQUIRE(on_gpu.is_cuda());
    CHECK(at::equal(on_gpu.cpu(), dla::memory::slot_of_keys(start_RS, keys_N)));
  }
  SECTION("the chunkwise form's broadcast: each query's row against the keys of its chunk") {
    const int64_t batch = 2, heads = 3, chunks = 4, chunk = 8, slots = 6;
    const at::Tensor start_RS = random_start_rows(batch * heads * chunks * chunk, slots, chunks * chunk, rng);
    const at::Tensor rows_BHNCS = start_RS.view({batch, heads, chunks, chunk, slots});
    const at::Tensor keys_N1C = at::arange(chunks * chunk, at::kLong).view({chunks, 1, chunk});
    const at::Tensor on_gpu = dla::memory::slot_of_keys(rows_BHNCS.cuda(), keys_N1C.cuda());
    REQUIRE(on_gpu.sizes() == at::IntArrayRef({batch, heads, chunks, chunk, chunk}));
    CHECK(at::equal(on_gpu.cpu(), dla::memory::slot_of_keys(rows_BHNCS, keys_N1C)));
  }
}
