// `dla bench data`: the training loader's throughput.
#include <chrono>
#include <limits>
#include <memory>

#include "dla/bench/bench.h"
#include "dla/data/token_dataset.h"

namespace dla::bench {

nlohmann::json bench_data(const DataBenchOptions& o) {
  auto dataset = std::make_shared<const data::TokenDataset>(o.data, "train", o.seq_len,
                                                            std::numeric_limits<int64_t>::max());
  data::BatchLoader loader(dataset, /*seed=*/0);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t b = 0; b < o.batches; ++b) {
    loader.prefetch((b + 1) * o.batch, o.batch);
    loader.batch(b * o.batch, o.batch);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double tokens = static_cast<double>(o.batches * o.batch * o.seq_len);
  return {{"data", o.data},
          {"seq_len", o.seq_len},
          {"batch", o.batch},
          {"batches", o.batches},
          {"ms_per_batch", 1e3 * seconds / static_cast<double>(o.batches)},
          {"tokens_per_s", tokens / seconds}};
}

}  // namespace dla::bench
