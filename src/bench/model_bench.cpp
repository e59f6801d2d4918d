// `dla bench model`: training steps of a model config.
// Shapes: B batch, T tokens.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <chrono>

#include "dla/bench/bench.h"
#include "dla/bench/kernel_profile.h"
#include "dla/dist/device.h"
#include "dla/dist/gradient_reducer.h"
#include "dla/dist/replicas.h"
#include "dla/model/causal_lm.h"
#include "dla/ops/tf32_scope.h"
#include "dla/train/fused_adamw.h"
#include "dla/train/graphed_step.h"
#include "dla/util/error.h"

#ifdef DLA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace dla::bench {

nlohmann::json bench_model(const config::RunConfig& config, const ModelBenchOptions& options,
                           double peak_tflops) {
  const auto& train = config.train;
  const bool cuda = torch::cuda::is_available() && train.device != train::DeviceKind::cpu;
  if (train.device == train::DeviceKind::cuda && !torch::cuda::is_available()) {
    throw UserError("train.device = cuda, but no CUDA device is available");
  }
  // Under `dla launch` each rank takes its share of the batch and gradients are all-reduced as in training.
  const dist::DistEnvironment env = dist::read_environment();
  const at::Device device = dist::rank_device(cuda, env);
  const bool autocast = train.precision == train::Precision::bfloat16;
  if (autocast && !cuda) throw UserError("train.precision = bfloat16 needs a CUDA device");
  const int64_t B = train.batch_size, T = train.seq_len;
  if (B % env.world_size != 0) {
    throw UserError(
        fmt::format("train.batch_size = {} must be a multiple of the {} ranks", B, env.world_size));
  }

  torch::manual_seed(static_cast<uint64_t>(config.run.seed));
  model::CausalLM model(config.model);
  model->to(device);
#ifdef DLA_WITH_CUDA
  // Entries of one suite share the process: none may report a peak of the one before. (Only once the
  // model is on the device: before its first allocation the allocator refuses the reset.)
  if (cuda) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  model->set_activation_checkpointing(train.activation_checkpointing);
  std::unique_ptr<dist::Communicator> communicator;
  std::unique_ptr<dist::GradientReducer> reducer;
  if (env.distributed()) {
    communicator = std::make_unique<dist::Communicator>(env, config.dist, device);
    dist::broadcast_module(*communicator, *model);
    reducer = std::make_unique<dist::GradientReducer>(*communicator, model->parameters(),
                                                      static_cast<int64_t>(config.dist.bucket_mb * 1e6));
  }
  train::FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(config.optim.lr));
  const at::Tensor ids = at::randint(config.model.vocab_size, {B / env.world_size, T},
                                     at::TensorOptions().device(device).dtype(at::kLong));

  const auto forward_backward = [&](const at::Tensor& tokens) {
    at::autocast::set_autocast_enabled(at::kCUDA, autocast);
    if (autocast) at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    const at::Tensor logits = model->forward(tokens);
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
    const at::Tensor loss = model::next_token_loss(logits, tokens);
    loss.backward();
    return loss.detach();
  };
  std::unique_ptr<train::GraphedStep> graphed;
  if (train.cuda_graphs) {
    if (!cuda) throw UserError("train.cuda_graphs needs a CUDA device");
    if (env.distributed()) throw UserError("train.cuda_graphs runs in one process; set it to false");
    graphed = std::make_unique<train::GraphedStep>(
        [&](const at::Tensor& tokens, const at::Tensor&) {
          return std::vector<at::Tensor>{forward_backward(tokens)};
        },
        [&] { optimizer.zero_grad(); });
  }
  auto step = [&] {
    // As in training: TF32 for the mixers' float32 matmuls under bf16 autocast, backward included.
    const ops::Tf32Scope tf32(autocast);
    if (graphed) {
      graphed->run(ids, ids);
    } else {
      optimizer.zero_grad();
      forward_backward(ids);
      if (reducer) reducer->finish();
    }
    optimizer.step();
  };
  for (int64_t i = 0; i < options.warmup; ++i)
    step();
  if (cuda) torch::cuda::synchronize();
  if (communicator) communicator->barrier();
#ifdef DLA_WITH_CUDA
  // A graphed step's memory is the graph's private pool, filled at capture: its peak (since this entry
  // started) is kept.
  if (cuda && !graphed) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < options.steps; ++i)
    step();
  if (cuda) torch::cuda::synchronize();
  if (communicator) communicator->barrier();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
                         static_cast<double>(options.steps);

  const auto num_params = model->num_parameters();
  const double tokens_per_s = static_cast<double>(B * T) / seconds;
  // 6·N FLOPs per token for forward and backward of the weights; the mixers' own work is not counted.
  const double tflops = 6.0 * static_cast<double>(num_params) * tokens_per_s / 1e12;
  nlohmann::json result = {{"mixer", config::enum_name(config.model.mixer)},
                           {"parameters", num_params},
                           {"batch", B},
                           {"seq_len", T},
                           {"precision", config::enum_name(train.precision)},
                           {"activation_checkpointing", train.activation_checkpointing},
                           {"cuda_graphs", train.cuda_graphs},
                           {"device", device.str()},
                           {"ranks", env.world_size},
                           {"backend", communicator ? communicator->backend_name() : "none"},
                           {"step_ms", seconds * 1e3},
                           {"tokens_per_s", tokens_per_s},
                           {"tokens_per_s_per_rank", tokens_per_s / env.world_size},
                           {"model_tflops", tflops},
                           {"mfu", tflops / peak_tflops}};
#ifdef DLA_WITH_CUDA
  if (cuda) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    result["peak_memory_gib"] =
        static_cast<double>(
            stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
                .peak) /
        (1 << 30);
  }
#endif
  if (!options.profile.empty()) {
    result["profile"] = profile_kernels(step, options.profile, device.is_cuda());
    if (device.is_cuda()) result["profile_by_op"] = kernel_time_by_op(options.profile);
  }
  return result;
}

}  // namespace dla::bench
