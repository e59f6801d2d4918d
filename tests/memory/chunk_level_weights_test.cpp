// Tests of the chunkwise form's read weights: the LibTorch path against a direct scan of each query's row of
// the segment table, and on the GPU the CUDA kernels against the LibTorch path in value and gradient, over
// DLA tables (with confidences) and the shared Fenwick table, with padded last chunks. Shapes: B batch, H
// heads, N chunks, C chunk length, S slots, L = S + 1 levels.
#include "dla/memory/chunk_level_weights.h"

#include <cstdint>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>

#include "catch.h"
#include "dla/memory/segments.h"
#include "ops/op_testing.h"

namespace {

using dla::memory::ChunkLevelInputs;
using dla::memory::ChunkLevelWeights;

/// The inputs chunkwise builds from a segment table [B|1, H|1, T + 1, S]: its rows cut into chunks of C
/// (past the last row, the last row again), the rows at each chunk's start, and random λ and confidences.
ChunkLevelInputs chunked_inputs(const at::Tensor& start_BHQS, int64_t batch, int64_t heads, int64_t tokens,
                                int64_t chunk, bool with_conf, at::Generator& gen) {
  const int64_t chunks = (tokens + chunk - 1) / chunk, padded = chunks * chunk, S = start_BHQS.size(3);
  at::Tensor rows = start_BHQS;
  if (rows.size(2) < padded + 1) {
    const at::Tensor last = rows.narrow(2, rows.size(2) - 1, 1);
    rows = at::cat({rows, last.expand({rows.size(0), rows.size(1), padded + 1 - rows.size(2), S})}, 2);
  }
  const at::Tensor rows_BHNCS =
      rows.narrow(2, 0, padded).reshape({rows.size(0), rows.size(1), chunks, chunk, S});
  const at::Tensor state_keys_BHNS = rows.index_select(2, at::arange(0, padded, chunk, at::kLong));
  const at::Tensor lam_BHNCL = at::rand({batch, heads, chunks, chunk, S + 1}, gen, at::kDouble) + 0.25;
  const at::Tensor conf_BHNCS =
      with_conf ? at::rand({batch, heads, chunks, chunk, S}, gen, at::kDouble) : at::Tensor();
  return {rows_BHNCS, state_keys_BHNS, lam_BHNCL, conf_BHNCS};
}

/// The first slot of `row` whose segment starts at or before key, else −1.
int64_t slot_by_scan(const at::TensorAccessor<int64_t, 1>& row, int64_t key) {
  for (int64_t s = 0; s < row.size(0); ++s) {
    if (row[s] >= 0 && row[s] <= key) return s;
  }
  return -1;
}

at::Tensor random_scores(int64_t batch, int64_t tokens, int64_t heads, at::Generator& gen) {
  at::Tensor u_BTH = at::randint(9, {batch, tokens, heads}, gen, at::kFloat) / 8;
  u_BTH.select(1, 0).fill_(1);
  return u_BTH;
}

}  // namespace

TEST_CASE("the chunkwise read weights are λ and the confidence of each key's slot", "[memory]") {
  const bool with_conf = GENERATE(false, true);
  CAPTURE(with_conf);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(41);
  const int64_t batch = 2, heads = 2, tokens = 21, chunk = 8;
  const at::Tensor table =
      dla::memory::dla_segments(random_scores(batch, tokens, heads, gen), {.capacity = 3, .threshold = 0.5})
          .start_BHQS;
  const ChunkLevelInputs in = chunked_inputs(table, batch, heads, tokens, chunk, with_conf, gen);
  const ChunkLevelWeights got = dla::memory::chunk_level_weights(in, /*kernel=*/false);

  const int64_t chunks = in.lam_BHNCL.size(2), S = in.rows_BHNCS.size(4);
  const auto rows = in.rows_BHNCS.accessor<int64_t, 5>();
  const auto state_keys = in.state_keys_BHNS.accessor<int64_t, 4>();
  const auto lam = in.lam_BHNCL.accessor<double, 5>();
  const at::Tensor conf_BHNCS = with_conf ? in.conf_BHNCS : at::ones_like(in.rows_BHNCS, at::kDouble);
  const auto conf = conf_BHNCS.accessor<double, 5>();
  const auto intra = got.intra_BHNCC.accessor<double, 5>();
  const auto state = got.state_BHNCS.accessor<double, 5>();
  int64_t empty_states = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t n = 0; n < chunks; ++n) {
        for (int64_t i = 0; i < chunk; ++i) {
          const auto row = rows[b][h][n][i];
          for (int64_t j = 0; j <= i; ++j) {
            const int64_t slot = slot_by_scan(row, n * chunk + j);
            CAPTURE(b, h, n, i, j, slot);
            REQUIRE((j == i || slot >= 0));  // every earlier key of the chunk is in a segment
            const double expected =
                j == i ? lam[b][h][n][i][0] : lam[b][h][n][i][slot + 1] * conf[b][h][n][i][slot];
            CHECK(intra[b][h][n][i][j] == expected);
          }
          for (int64_t s = 0; s < S; ++s) {
            const int64_t slot = slot_by_scan(row, state_keys[b][h][n][s]);
            CAPTURE(b, h, n, i, s, slot);
            empty_states += slot < 0;
            CHECK(state[b][h][n][i][s] ==
                  (slot < 0 ? 0.0 : lam[b][h][n][i][slot + 1] * conf[b][h][n][i][slot]));
          }
        }
      }
    }
  }
  CHECK(empty_states > 0);  // the first chunk starts with every slot empty
}

TEST_CASE("on the GPU the read-weight kernels equal the LibTorch path in value and gradient",
          "[memory][cuda]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: the read-weight kernels are not exercised on this machine");
    return;
  }
  const std::string policy = GENERATE("dla", "fenwick");
  const int64_t chunk = GENERATE(16, 64, 128);
  CAPTURE(policy, chunk);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(43 + chunk);
  const int64_t batch = 2, heads = 3, tokens = 3 * chunk - 5;
  at::Tensor table;
  if (policy == "dla") {
    table =
        dla::memory::dla_segments(random_scores(batch, tokens, heads, gen), {.capacity = 8, .threshold = 0.5})
            .start_BHQS;
  } else {
    table = dla::memory::fenwick_segments(tokens, 9).start_BHQS;
  }
  const ChunkLevelInputs on_cpu = chunked_inputs(table, batch, heads, tokens, chunk, policy == "dla", gen);
  const auto cuda = [](const at::Tensor& x, at::ScalarType type) {
    return x.defined() ? x.to(at::kCUDA, type).requires_grad_(at::isFloatingType(type)) : x;
  };
  const ChunkLevelInputs in{cuda(on_cpu.rows_BHNCS, at::kLong), cuda(on_cpu.state_keys_BHNS, at::kLong),
                            cuda(on_cpu.lam_BHNCL, at::kFloat), cuda(on_cpu.conf_BHNCS, at::kFloat)};
  REQUIRE(dla::memory::chunk_level_weights_use_cuda_kernels(in));
  const ChunkLevelWeights kernel = dla::memory::chunk_level_weights(in, /*kernel=*/true);
  const ChunkLevelWeights ops = dla::memory::chunk_level_weights(in, /*kernel=*/false);
  CHECK(at::equal(kernel.intra_BHNCC, ops.intra_BHNCC));
  CHECK(at::equal(kernel.state_BHNCS, ops.state_BHNCS));

  const at::Tensor d_intra = at::randn(ops.intra_BHNCC.sizes(), gen, at::kDouble).to(at::kCUDA, at::kFloat);
  const at::Tensor d_state = at::randn(ops.state_BHNCS.sizes(), gen, at::kDouble).to(at::kCUDA, at::kFloat);
  const auto gradients = [&](const ChunkLevelWeights& w) {
    std::vector<at::Tensor> leaves = {in.lam_BHNCL};
    if (in.conf_BHNCS.defined()) leaves.push_back(in.conf_BHNCS);
    return torch::autograd::grad({(w.intra_BHNCC * d_intra).sum() + (w.state_BHNCS * d_state).sum()}, leaves);
  };
  const std::vector<at::Tensor> expected = gradients(ops), got = gradients(kernel);
  REQUIRE(got.size() == expected.size());
  dla::test::expect_close("dlam", expected[0].cpu(), got[0].cpu(), 1e-5);
  if (expected.size() > 1) dla::test::expect_close("dconf", expected[1].cpu(), got[1].cpu(), 1e-5);
}
