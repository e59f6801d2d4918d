// Benchmarks behind `dla bench`: the chunkwise mixer ops at given sizes, and whole training steps of a
// model config. Timings synchronise the device; numbers go to docs/benchmarks.md, never into tests.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "dla/config/run_config.h"

namespace dla::bench {

struct LayerBenchOptions {
  std::string mixer = "gdn";      ///< gdn, mamba2 or sdpa (causal softmax attention)
  std::string memory = "single";  ///< single, fenwick or dla
  int64_t capacity = 8;           ///< dla: segments M
  int64_t max_length = 16384;     ///< fenwick: λ levels = ceil(log2 max_length) + 1, as fla's 15
  int64_t batch = 8;
  int64_t tokens = 2048;
  int64_t heads = 16;
  int64_t head_dim = 128;
  std::string dtype = "bfloat16";  ///< float32 or bfloat16
  std::string device = "auto";     ///< auto, cpu or cuda
  int64_t chunk_size = 64;
  int64_t warmup = 3;
  int64_t iters = 10;
  std::string kernels;  ///< auto, aten or fused (ops::KernelChoice); empty: DLA_KERNELS, else auto
  std::string
      profile;  ///< when set: a Chrome trace of one forward+backward goes there, top kernels to the JSON
};

/// Times the mixer's chunkwise op (GDN: gated delta rule; Mamba-2: SSD) under a memory policy, forward and
/// forward+backward on random inputs of [B,T,H,D] (dla: random scores, threshold 0.5; the boundary scan is
/// inside the timing). The sdpa mixer times LibTorch's causal scaled_dot_product_attention on the same
/// inputs (flash attention on the GPU), the baseline the targets compare against. Returns
/// {"fwd_ms", "fwd_bwd_ms", ...sizes}.
nlohmann::json bench_layer(const LayerBenchOptions& options);

struct ModelBenchOptions {
  int64_t warmup = 2;
  int64_t steps = 5;
  std::string profile;  ///< when set: a Chrome trace of one more step goes there, top kernels to the JSON
};

/// Times full training steps (forward, backward, AdamW) of the model in `config` at train.batch_size ×
/// train.seq_len with random tokens. Returns tokens/s, step time, parameters, an MFU estimate (6·N·tokens
/// against `peak_tflops`) and the peak device memory. Started by `dla launch`, the ranks split the batch and
/// all-reduce gradients as training does; tokens/s then counts all ranks.
nlohmann::json bench_model(const config::RunConfig& config, const ModelBenchOptions& options,
                           double peak_tflops);

struct DataBenchOptions {
  std::string data;  ///< a dataset directory written by `dla data prepare`
  int64_t seq_len = 2048;
  int64_t batch = 8;
  int64_t batches = 50;
};

/// Times the training loader on a prepared dataset: batches of batch × (seq_len + 1) tokens from the shuffled
/// order, each prefetched while the previous one is taken, as the trainer does. Returns tokens/s and ms per
/// batch, to compare with a GPU step's time.
nlohmann::json bench_data(const DataBenchOptions& options);

}  // namespace dla::bench
