// `dla bench layer|model|data|suite`: speed measurements. Output: one JSON object per run on stdout; a suite
// writes its results to files and prints its Markdown summary.
#include <fstream>
#include <iostream>

#include "dla/bench/bench.h"
#include "dla/bench/suite.h"
#include "dla/cli/command.h"
#include "dla/dist/environment.h"
#include "dla/util/log.h"

namespace dla::cli {

void add_bench_command(CLI::App& root, CommandList& commands) {
  auto* group = root.add_subcommand(
      "bench",
      "Measure speed: mixer ops (layer), training steps (model), the data loader (data), or a suite of "
      "layers and models from a file (suite)");

  auto* layer = group->add_subcommand("layer", "Forward and forward+backward time of a mixer's chunkwise op");
  auto layer_args = std::make_shared<bench::LayerBenchOptions>();
  layer
      ->add_option("--mixer", layer_args->mixer,
                   "gdn, mamba2, or sdpa (causal softmax attention, the baseline; memory single only)")
      ->check(CLI::IsMember({"gdn", "mamba2", "sdpa"}))
      ->capture_default_str();
  layer->add_option("--memory", layer_args->memory, "Memory policy: single, fenwick or dla")
      ->check(CLI::IsMember({"single", "fenwick", "dla"}))
      ->capture_default_str();
  layer->add_option("--capacity", layer_args->capacity, "dla: segments M")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  layer->add_option("--max-length", layer_args->max_length, "fenwick: longest sequence (sets the λ levels)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  layer->add_option("-B,--batch", layer_args->batch, "Batch size")->capture_default_str();
  layer->add_option("-T,--tokens", layer_args->tokens, "Sequence length")->capture_default_str();
  layer->add_option("-H,--heads", layer_args->heads, "Heads")->capture_default_str();
  layer->add_option("-D,--head-dim", layer_args->head_dim, "Head dim (key and value)")->capture_default_str();
  layer->add_option("--dtype", layer_args->dtype, "float32 or bfloat16")
      ->check(CLI::IsMember({"float32", "bfloat16"}))
      ->capture_default_str();
  layer->add_option("--device", layer_args->device, "auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  layer->add_option("--chunk", layer_args->chunk_size, "Chunk length")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  layer
      ->add_option(
          "--kernels", layer_args->kernels,
          "auto (fused on CUDA, LibTorch ops on the CPU), aten or fused [default: DLA_KERNELS, else auto]")
      ->check(CLI::IsMember({"auto", "aten", "fused"}));
  layer->add_option(
      "--profile", layer_args->profile,
      "Write a Chrome trace of one forward+backward to this file; the top kernels, and on the GPU their time "
      "by the operation that launched them, go in the output");
  layer->add_option("--warmup", layer_args->warmup, "Untimed runs first")->capture_default_str();
  layer->add_option("--iters", layer_args->iters, "Timed runs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  commands.push_back({layer, [layer_args] {
                        std::cout << bench::bench_layer(*layer_args).dump() << std::endl;
                        return kExitOk;
                      }});

  auto* model = group->add_subcommand("model", "Tokens/s and MFU of training steps of a model config");
  auto config_args = std::make_shared<ConfigArgs>();
  auto model_args = std::make_shared<bench::ModelBenchOptions>();
  auto peak = std::make_shared<double>(989.0);
  add_config_args(*model, *config_args);
  model->add_option("--warmup", model_args->warmup, "Untimed steps first")->capture_default_str();
  model->add_option("--steps", model_args->steps, "Timed steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  model->add_option(
      "--profile", model_args->profile,
      "Write a Chrome trace of one more training step to this file; the top kernels, and on the "
      "GPU their time by the operation that launched them, go in the output");
  model->add_option("--peak-tflops", *peak, "Peak dense TFLOP/s of the device for MFU (H200 bf16: 989)")
      ->capture_default_str();
  commands.push_back({model, [config_args, model_args, peak] {
                        const auto resolved =
                            config::resolve_run_config(config_args->file, config_args->overrides);
                        const auto env = dist::read_environment();
                        log::set_rank(env.rank, env.world_size);
                        const auto result = bench::bench_model(resolved.config, *model_args, *peak);
                        if (env.rank == 0) std::cout << result.dump() << std::endl;
                        return kExitOk;
                      }});

  auto* suite = group->add_subcommand(
      "suite",
      "Run the layer and model measurements of a suite file, each set against its references; "
      "write results.jsonl and summary.md and print the summary");
  auto suite_file = std::make_shared<std::string>();
  auto suite_out = std::make_shared<std::string>("runs/bench");
  suite
      ->add_option("file", *suite_file,
                   "Suite file (YAML, see docs/benchmarks.md), e.g. configs/bench/issue9.yaml")
      ->required();
  suite->add_option("--out", *suite_out, "Directory for results.jsonl and summary.md")->capture_default_str();
  auto suite_only = std::make_shared<std::vector<std::string>>();
  suite->add_option("--only", *suite_only, "Run only the entry of this name (repeatable)")
      ->allow_extra_args(false);
  commands.push_back({suite, [suite_file, suite_out, suite_only] {
                        bench::BenchSuite loaded = bench::load_bench_suite(*suite_file);
                        if (!suite_only->empty()) loaded = bench::only_entries(loaded, *suite_only);
                        const std::filesystem::path summary = bench::run_bench_suite(loaded, *suite_out);
                        std::cout << std::ifstream(summary).rdbuf();
                        return kExitOk;
                      }});

  auto* data = group->add_subcommand("data", "Tokens/s of the training loader on a prepared dataset");
  auto data_args = std::make_shared<bench::DataBenchOptions>();
  data->add_option("--data", data_args->data, "Dataset directory (dla data prepare --out)")->required();
  data->add_option("-T,--seq-len", data_args->seq_len, "Tokens per sequence")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  data->add_option("-B,--batch", data_args->batch, "Sequences per batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  data->add_option("--batches", data_args->batches, "Batches to time")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  commands.push_back({data, [data_args] {
                        std::cout << bench::bench_data(*data_args).dump() << std::endl;
                        return kExitOk;
                      }});
}

}  // namespace dla::cli
