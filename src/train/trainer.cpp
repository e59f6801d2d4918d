// The training loop.
// Shapes: B batch, T tokens, V vocabulary.
#include "dla/train/trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <thread>

#include "dla/checkpoint/model_checkpoint.h"
#include "dla/checkpoint/train_checkpoint.h"
#include "dla/data/manifest.h"
#include "dla/data/mqar.h"
#include "dla/data/tokenizer.h"
#include "dla/dist/device.h"
#include "dla/dist/replicas.h"
#include "dla/eval/runner.h"
#include "dla/io/atomic_file.h"
#include "dla/ops/cross_entropy.h"
#include "dla/ops/tf32_scope.h"
#include "dla/train/fused_adamw.h"
#include "dla/train/grad_clip.h"
#include "dla/train/lr_schedule.h"
#include "dla/util/error.h"
#include "dla/util/stop_signals.h"

namespace dla::train {
namespace {

at::Device choose_device(DeviceKind kind, const dist::DistEnvironment& env) {
  const bool cuda = torch::cuda::is_available();
  if (kind == DeviceKind::cuda && !cuda) {
    throw UserError("train.device = cuda, but no CUDA device is available (see `dla version`)");
  }
  return dist::rank_device(kind == DeviceKind::cuda || (kind == DeviceKind::auto_select && cuda), env);
}

// Test hooks for failure handling: DLA_FAULT_RANK=kill:R:S makes rank R kill itself (SIGKILL) when step S
// starts; hang:R:S makes it stop responding there.
void inject_rank_fault(int rank, int64_t step) {
  const char* spec = std::getenv("DLA_FAULT_RANK");
  if (spec == nullptr) return;
  char action[8] = {};
  int fault_rank = -1;
  long long fault_step = -1;
  if (std::sscanf(spec, "%7[a-z]:%d:%lld", action, &fault_rank, &fault_step) != 3) return;
  if (fault_rank != rank || fault_step != step) return;
  spdlog::warn("DLA_FAULT_RANK: rank {} {} at step {}", rank, action, step);
  if (std::string_view(action) == "kill") std::raise(SIGKILL);
  if (std::string_view(action) == "hang") {
    while (true)
      std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

// Weight decay applies to matrices; vectors (norm weights, biases, A_log, dt_bias, D) and the level scales
// L of the multi-state memories (spec/dla.md §1) are exempt.
std::vector<torch::optim::OptimizerParamGroup> param_groups(torch::nn::Module& model,
                                                            const OptimOptions& optim) {
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& item : model.named_parameters()) {
    const bool level_scales = item.key().ends_with(".memory.L");
    (item.value().dim() >= 2 && !level_scales ? decay : no_decay).push_back(item.value());
  }
  auto options = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(optim.lr)
                                                            .betas({optim.beta1, optim.beta2})
                                                            .eps(optim.eps)
                                                            .weight_decay(weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(optim.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return groups;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

// Seeds for generated data: distinct streams for training micro-batches and for evaluation.
uint64_t data_seed(int64_t run_seed, int64_t step, int64_t micro, int rank) {
  return static_cast<uint64_t>(run_seed) * 0x9E3779B97F4A7C15ULL ^ (static_cast<uint64_t>(step) << 20) ^
         (static_cast<uint64_t>(micro) << 8) ^ static_cast<uint64_t>(rank);
}

}  // namespace

at::Tensor masked_loss(const at::Tensor& logits_BTV, const at::Tensor& labels_BT) {
  return ops::cross_entropy(logits_BTV.reshape({-1, logits_BTV.size(-1)}), labels_BT.reshape({-1}));
}

Trainer::Trainer(const config::ResolvedConfig& resolved, run::RunDirectory run_dir,
                 dist::DistEnvironment dist)
    : resolved_(resolved),
      config_(resolved.config),
      run_dir_(std::move(run_dir)),
      dist_(std::move(dist)),
      device_(choose_device(config_.train.device, dist_)) {
  if (config_.train.precision == Precision::bfloat16 && !device_.is_cuda()) {
    throw UserError("train.precision = bfloat16 needs a CUDA device; use float32 on the CPU");
  }
  const auto& train = config_.train;
  if (train.batch_size % (train.grad_accum_steps * dist_.world_size) != 0) {
    throw UserError(
        fmt::format("train.batch_size = {} must be a multiple of train.grad_accum_steps × ranks = {} × {}: "
                    "the global batch "
                    "is split evenly over micro-batches and ranks",
                    train.batch_size, train.grad_accum_steps, dist_.world_size));
  }
  torch::manual_seed(static_cast<uint64_t>(config_.run.seed));
  model_ = model::CausalLM(config_.model);
  model_->to(device_);
  model_->set_activation_checkpointing(config_.train.activation_checkpointing);
  if (dist_.distributed()) {
    communicator_ = std::make_unique<dist::Communicator>(dist_, config_.dist, device_);
    dist::broadcast_module(*communicator_, *model_);
    dist::verify_replicas(*communicator_, *model_, "after the initial broadcast");
    reducer_ = std::make_unique<dist::GradientReducer>(*communicator_, model_->parameters(),
                                                       static_cast<int64_t>(config_.dist.bucket_mb * 1e6));
    spdlog::info(
        "data parallel: {} ranks over {} ({} gradient buckets of ≤ {} MB), {} sequences per rank and "
        "micro-batch",
        dist_.world_size, communicator_->backend_name(), reducer_->num_buckets(), config_.dist.bucket_mb,
        train.batch_size / train.grad_accum_steps / dist_.world_size);
  }
  optimizer_ = std::make_unique<FusedAdamW>(param_groups(*model_, config_.optim));
  if (train.cuda_graphs) {
    if (!device_.is_cuda()) throw UserError("train.cuda_graphs needs a CUDA device; the run is on the CPU");
    if (dist_.distributed()) {
      throw UserError("train.cuda_graphs runs in one process; set it to false under `dla launch`");
    }
    if (!cuda_graphs_available()) throw UserError("train.cuda_graphs: this build of dla has no CUDA");
    graphed_step_ = std::make_unique<GraphedStep>(
        [this](const at::Tensor& ids, const at::Tensor& labels) {
          return std::vector<at::Tensor>{forward_backward(ids, labels),
                                         clip_grad_norm(model_->parameters(), config_.optim.grad_clip)};
        },
        [this] { optimizer_->zero_grad(); });
  }
  if (!config_.eval.suite.empty()) {
    eval_suite_ = eval::load_suite(config_.eval.suite);
    eval_tokenizer_ = data::load_tokenizer(config_.data.tokenizer.empty() ? "byte" : config_.data.tokenizer);
    if (eval::needs_tokenizer(*eval_suite_) && eval_tokenizer_->vocab_size() > config_.model.vocab_size) {
      throw UserError(
          fmt::format("eval.suite: the tokenizer ({} tokens) does not fit model.vocab_size = {}; set "
                      "data.tokenizer to the model's tokenizer",
                      eval_tokenizer_->vocab_size(), config_.model.vocab_size));
    }
  }
  if (is_main()) metrics_ = std::make_unique<MetricsLog>(run_dir_.root / "metrics.jsonl");
  if (config_.data.source == data::DataSource::tokens) {
    const auto& d = config_.data;
    std::optional<uint64_t> fingerprint;
    if (!d.tokenizer.empty()) fingerprint = data::load_tokenizer(d.tokenizer)->fingerprint();
    auto train_set = std::make_shared<data::TokenDataset>(d.path, "train", config_.train.seq_len,
                                                          config_.model.vocab_size, fingerprint);
    train_loader_ = std::make_unique<data::BatchLoader>(train_set, static_cast<uint64_t>(config_.run.seed));
    spdlog::info("data: {} training tokens in {} windows of {} + 1 from {}", train_set->num_tokens(),
                 train_set->num_windows(), config_.train.seq_len, d.path);
    if (train_set->manifest().tokens_val > 0) {
      val_loader_ = std::make_unique<data::BatchLoader>(
          std::make_shared<data::TokenDataset>(d.path, "val", config_.train.seq_len, config_.model.vocab_size,
                                               fingerprint),
          0, /*shuffle=*/false);
    }
  }
  spdlog::info("model: {} ({} layers, hidden {}), {:.3f}M parameters, device {}, {}",
               config::enum_name(config_.model.mixer), config_.model.num_layers, config_.model.hidden_size,
               static_cast<double>(model_->num_parameters()) / 1e6, device_.str(),
               config::enum_name(config_.train.precision));
}

Trainer::~Trainer() = default;

std::vector<double> Trainer::sum_over_ranks(std::vector<double> values) {
  if (!communicator_) return values;
  at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble)).to(device_);
  communicator_->all_reduce(t);
  t = t.cpu();
  return {t.const_data_ptr<double>(), t.const_data_ptr<double>() + t.numel()};
}

nlohmann::json Trainer::run(std::optional<int64_t> stop_at) {
  const auto& train = config_.train;
  spdlog::info("training {} steps of {} sequences × {} tokens; run directory {}", train.steps,
               train.batch_size, train.seq_len, run_dir_.root.string());
  model_->train();
  const StopSignals stop_signals;
  const auto& every = config_.checkpoint.every;
  int64_t saved_step = -1;
  while (state_.step < train.steps) {
    inject_rank_fault(dist_.rank, state_.step + 1);
    if (communicator_) communicator_->announce_step(state_.step + 1);
    const auto start = std::chrono::steady_clock::now();
    const StepResult result = train_step(stop_signals.requested());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log_step(result, seconds);
    if (train.eval_every > 0 && state_.step % train.eval_every == 0 && state_.step < train.steps) {
      const nlohmann::json eval = evaluate();
      if (metrics_) metrics_->append(eval);
    }
    if (eval_suite_ && config_.eval.every > 0 && state_.step % config_.eval.every == 0 &&
        state_.step < train.steps) {
      run_eval_suite();
    }
    if (result.stop) {
      spdlog::warn("stop requested (signal {}): saving step {} and exiting", stop_signals.signal(),
                   state_.step);
    }
    if (result.stop || (stop_at && state_.step >= *stop_at && state_.step < train.steps)) {
      save_checkpoint();
      return {{"stopped_at_step", state_.step}};
    }
    if (every > 0 && state_.step % every == 0) {
      save_checkpoint();
      saved_step = state_.step;
    }
  }
  if (saved_step != state_.step) save_checkpoint();
  if (communicator_) dist::verify_replicas(*communicator_, *model_, fmt::format("at step {}", state_.step));
  const nlohmann::json eval = evaluate();
  if (metrics_ && train_loader_) metrics_->append(eval);
  if (eval_suite_) run_eval_suite();
  if (is_main()) {
    write_curve_svg(run_dir_.root / "loss.svg", curve_steps_, curve_losses_,
                    fmt::format("{} — training loss", config_.run.name), "loss");
    // The final weights, loadable by `dla score` and `dla generate`.
    checkpoint::save_model_checkpoint(run_dir_.root / "model", resolved_, *model_);
    spdlog::info("wrote {}, {} and the model {}", (run_dir_.root / "metrics.jsonl").string(),
                 (run_dir_.root / "loss.svg").string(), (run_dir_.root / "model").string());
  }
  return eval;
}

at::Tensor Trainer::forward_backward(const at::Tensor& ids, const at::Tensor& labels) {
  const auto& train = config_.train;
  const bool autocast = train.precision == Precision::bfloat16;
  at::autocast::set_autocast_enabled(at::kCUDA, autocast);
  if (autocast) at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  const at::Tensor logits = model_->forward(ids);
  at::autocast::set_autocast_enabled(at::kCUDA, false);
  at::autocast::clear_cache();
  const at::Tensor loss = masked_loss(logits, labels);
  // The memory's auxiliary loss (dla's ratio loss) trains with the LM loss but is not logged as part of it.
  const at::Tensor auxiliary = model_->auxiliary_loss();
  const double accumulation = static_cast<double>(train.grad_accum_steps);
  (auxiliary.defined() ? (loss + auxiliary) / accumulation : loss / accumulation).backward();
  return loss.detach() / accumulation;
}

StepResult Trainer::train_step(bool stop_requested) {
  const auto& train = config_.train;
  StepResult result;
  result.lr = lr_at(config_.optim, state_.step + 1, train.steps);
  for (auto& group : optimizer_->param_groups())
    group.options().set_lr(result.lr);
  // The mixers' float32 matmuls run in TF32 under bf16 autocast in the forward pass; their autograd backward
  // runs here, outside the ops, and multiplies the same way.
  const ops::Tf32Scope tf32(train.precision == Precision::bfloat16);
  at::Tensor loss_sum, grad_norm;
  if (graphed_step_) {
    const auto [ids_cpu, labels_cpu] = this->micro_batch(state_.step, 0);
    const bool was_captured = graphed_step_->captured();
    const std::vector<at::Tensor> outputs = graphed_step_->run(ids_cpu.to(device_, /*non_blocking=*/true),
                                                               labels_cpu.to(device_, /*non_blocking=*/true));
    if (!was_captured && graphed_step_->captured())
      spdlog::info("train.cuda_graphs: step {} captured as a CUDA graph; the later steps replay it",
                   state_.step + 1);
    loss_sum = outputs[0];
    grad_norm = outputs[1];
  } else {
    optimizer_->zero_grad();
    loss_sum = at::zeros({}, at::TensorOptions().device(device_));
    for (int64_t micro = 0; micro < train.grad_accum_steps; ++micro) {
      // Ranks exchange gradients once per step, after the last micro-batch's backward pass.
      if (reducer_) reducer_->set_sync(micro + 1 == train.grad_accum_steps);
      const auto [ids_cpu, labels_cpu] = this->micro_batch(state_.step, micro);
      loss_sum += forward_backward(ids_cpu.to(device_, /*non_blocking=*/true),
                                   labels_cpu.to(device_, /*non_blocking=*/true));
    }
    if (reducer_) reducer_->finish();
    grad_norm = clip_grad_norm(model_->parameters(), config_.optim.grad_clip);
  }
  // The update is queued before anything is read back, so the device does not wait for the host inside the
  // step. A diverged loss is caught just after; no checkpoint is written from that update.
  optimizer_->step();
  // The loss over the global batch and the stop decision travel together (every rank stops at the same
  // step), with the gradient norm (the same on every rank after the all-reduce): one read per step.
  at::Tensor readout =
      at::stack({loss_sum.to(at::kDouble), at::full({}, stop_requested ? 1.0 : 0.0,
                                                    at::TensorOptions().dtype(at::kDouble).device(device_))});
  if (communicator_) communicator_->all_reduce(readout);
  readout = at::cat({readout, grad_norm.to(device_, at::kDouble).reshape({1})}).cpu();
  const double* totals = readout.const_data_ptr<double>();
  result.loss = totals[0] / dist_.world_size;
  result.stop = totals[1] > 0;
  result.grad_norm = totals[2];
  if (!std::isfinite(result.loss)) {
    throw UserError(
        fmt::format("the loss is {} at step {}: training diverged. Lower optim.lr (now {}), raise "
                    "optim.warmup_steps, or check the data",
                    result.loss, state_.step + 1, config_.optim.lr));
  }
  state_.step += 1;
  state_.tokens_seen += train.batch_size * train.seq_len;
  state_.samples_seen += train.batch_size;
  tokens_since_log_ += train.batch_size * train.seq_len;
  return result;
}

void Trainer::log_step(const StepResult& result, double seconds) {
  seconds_since_log_ += seconds;
  seconds_total_ += seconds;
  const auto& train = config_.train;
  if (!is_main() || (state_.step % train.log_every != 0 && state_.step != train.steps)) return;
  const double tokens_per_s = static_cast<double>(tokens_since_log_) / std::max(seconds_since_log_, 1e-9);
  const double eta =
      seconds_total_ / static_cast<double>(state_.step) * static_cast<double>(train.steps - state_.step);
  const std::string per_rank =
      dist_.distributed() ? fmt::format(" ({:.0f} per rank)", tokens_per_s / dist_.world_size) : "";
  spdlog::info("step {}/{} | loss {:.4f} | grad_norm {:.3f} | lr {:.2e} | tok/s {:.0f}{} | eta {}",
               state_.step, train.steps, result.loss, result.grad_norm, result.lr, tokens_per_s, per_rank,
               format_duration(eta));
  metrics_->append({{"step", state_.step},
                    {"loss", result.loss},
                    {"lr", result.lr},
                    {"grad_norm", result.grad_norm},
                    {"tokens", state_.tokens_seen},
                    {"tokens_per_s", tokens_per_s},
                    {"world_size", dist_.world_size},
                    {"elapsed_s", seconds_total_}});
  curve_steps_.push_back(static_cast<double>(state_.step));
  curve_losses_.push_back(result.loss);
  seconds_since_log_ = 0;
  tokens_since_log_ = 0;
}

bool Trainer::resume(const std::string& spec) {
  std::filesystem::path dir = spec;
  if (spec == "auto") {
    std::optional<std::filesystem::path> newest;
    for (const auto& status : checkpoint::list_checkpoints(run_dir_.root)) {
      if (status.ok()) {
        newest = status.dir;
      } else {
        spdlog::warn("skipping damaged checkpoint {}: {}", status.dir.string(), status.problem);
      }
    }
    if (!newest) {
      spdlog::info("--resume auto: no checkpoint in {}; starting from step 0", run_dir_.root.string());
      return false;
    }
    dir = *newest;
  }
  std::vector<std::string> changed;
  const checkpoint::TrainingProgress progress =
      checkpoint::load_train_checkpoint(dir, resolved_, *model_, *optimizer_, changed);
  for (const auto& key : changed)
    spdlog::info("resume: {} differs from the checkpoint's config (allowed: not part of the model)", key);
  if (!progress.tokenizer_fingerprint.empty() && progress.tokenizer_fingerprint != tokenizer_fingerprint()) {
    throw UserError(
        fmt::format("{}: the checkpoint trained on data of tokenizer {}, the configured data has {}",
                    dir.string(), progress.tokenizer_fingerprint, tokenizer_fingerprint()));
  }
  state_ = {progress.step, progress.tokens_seen, progress.samples_seen};
  if (communicator_) dist::verify_replicas(*communicator_, *model_, "after resuming from " + dir.string());
  spdlog::info("resumed from {}: step {}, {} tokens, data cursor {} (saved with {} rank{}, now {})",
               dir.string(), progress.step, progress.tokens_seen, progress.samples_seen, progress.world_size,
               progress.world_size == 1 ? "" : "s", dist_.world_size);
  return true;
}

std::string Trainer::tokenizer_fingerprint() const {
  return train_loader_ ? data::fingerprint_hex(train_loader_->dataset().manifest().tokenizer_fingerprint)
                       : "";
}

void Trainer::save_checkpoint() {
  // Replicas are identical, so rank 0 writes; the others wait, so that no rank runs ahead of (or exits
  // before) a checkpoint the job may need.
  if (is_main()) {
    const auto path = checkpoint::save_train_checkpoint(
        run_dir_.root, resolved_, *model_, *optimizer_,
        {state_.step, state_.tokens_seen, state_.samples_seen, dist_.world_size, tokenizer_fingerprint()});
    checkpoint::apply_retention(run_dir_.root, config_.checkpoint.keep_last, config_.checkpoint.keep_every);
    spdlog::info("saved checkpoint {}", path.string());
  }
  if (communicator_) communicator_->barrier();
}

std::pair<at::Tensor, at::Tensor> Trainer::micro_batch(int64_t step, int64_t micro) {
  const auto& train = config_.train;
  const int64_t size = train.batch_size / train.grad_accum_steps / dist_.world_size;
  if (!train_loader_) {
    // The whole micro-batch of all ranks comes from one seed, and each rank takes its slice, so the global
    // batch does not depend on the number of ranks.
    auto batch = data::generate_mqar(config_.data.mqar, size * dist_.world_size, train.seq_len,
                                     config_.model.vocab_size, data_seed(config_.run.seed, step, micro, 0));
    return {batch.ids_BL.narrow(0, dist_.rank * size, size),
            batch.labels_BL.narrow(0, dist_.rank * size, size)};
  }
  // Global sample indices: step-major, then micro-batch, then rank, from the run's data cursor (samples
  // consumed before this step), so a run continues at the same sample on any world size.
  const auto first = [&](int64_t s, int64_t m) {
    return state_.samples_seen + (s - step) * train.batch_size +
           m * (train.batch_size / train.grad_accum_steps) + dist_.rank * size;
  };
  data::TokenBatch batch = train_loader_->batch(first(step, micro), size);
  const bool last_micro = micro + 1 == train.grad_accum_steps;
  train_loader_->prefetch(first(last_micro ? step + 1 : step, last_micro ? 0 : micro + 1), size);
  return {batch.ids_BT, batch.labels_BT};
}

void Trainer::run_eval_suite() {
  eval::EvalOptions options;
  options.data_root = config_.eval.data_root;
  options.limit = config_.eval.limit;
  options.batch_size = std::max<int64_t>(1, config_.train.batch_size / config_.train.grad_accum_steps);
  spdlog::info("step {}: evaluation suite '{}'", state_.step, eval_suite_->name);
  const auto results = eval::run_suite(*eval_suite_, *model_, *eval_tokenizer_, config_.model.vocab_size,
                                       device_, options, {dist_.rank, dist_.world_size, communicator_.get()});
  model_->train();
  nlohmann::json tasks = nlohmann::json::object();
  for (const auto& task : results)
    if (task.skipped.empty()) tasks[task.name] = task.metrics;
  if (metrics_) metrics_->append({{"step", state_.step}, {"eval", tasks}});
}

nlohmann::json Trainer::evaluate() {
  return train_loader_ ? evaluate_validation_loss() : evaluate_mqar();
}

nlohmann::json Trainer::evaluate_validation_loss() {
  nlohmann::json result = {{"step", state_.step}};
  if (!val_loader_) {
    spdlog::warn("the dataset has no validation split (data prepare --val-fraction): no validation loss");
    return result;
  }
  at::NoGradGuard no_grad;
  model_->eval();
  const int64_t size = std::max<int64_t>(1, config_.train.batch_size / config_.train.grad_accum_steps);
  double loss_sum = 0;
  double token_count = 0;
  // Batches are dealt round-robin over the ranks; the sums over ranks are the single-process ones.
  for (int64_t b = dist_.rank; b < config_.data.val_batches; b += dist_.world_size) {
    const data::TokenBatch batch = val_loader_->batch(b * size, size);
    const at::Tensor logits = model_->forward(batch.ids_BT.to(device_));
    const auto n = static_cast<double>(batch.labels_BT.numel());
    loss_sum += masked_loss(logits, batch.labels_BT.to(device_)).item<double>() * n;
    token_count += n;
  }
  model_->train();
  const auto totals = sum_over_ranks({loss_sum, token_count});
  const double loss = totals[0] / totals[1];
  const auto tokens = static_cast<int64_t>(totals[1]);
  spdlog::info("step {}: validation loss {:.4f} over {} tokens", state_.step, loss, tokens);
  result["val_loss"] = loss;
  result["val_tokens"] = tokens;
  if (is_main()) {
    const std::string text = result.dump(2) + "\n";
    io::write_file_atomic(run_dir_.root / "eval.json", std::as_bytes(std::span(text.data(), text.size())));
  }
  return result;
}

nlohmann::json Trainer::evaluate_mqar() {
  at::NoGradGuard no_grad;
  model_->eval();
  const auto& mqar = config_.data.mqar;
  const auto batch =
      data::generate_mqar(mqar, mqar.eval_examples, config_.train.seq_len, config_.model.vocab_size,
                          data_seed(config_.run.seed, /*step=*/-1, /*micro=*/0, /*rank=*/0));
  double correct = 0, total = 0;
  const int64_t eval_batch = std::max<int64_t>(1, config_.train.batch_size / config_.train.grad_accum_steps);
  // Chunks are dealt round-robin over the ranks; the counts summed over ranks are the single-process ones.
  for (int64_t begin = dist_.rank * eval_batch; begin < mqar.eval_examples;
       begin += eval_batch * dist_.world_size) {
    const int64_t n = std::min(eval_batch, mqar.eval_examples - begin);
    const at::Tensor ids = batch.ids_BL.narrow(0, begin, n).to(device_);
    const at::Tensor labels = batch.labels_BL.narrow(0, begin, n).to(device_);
    const at::Tensor predicted = model_->forward(ids).argmax(-1);
    const at::Tensor scored = labels.ne(-100);
    correct += static_cast<double>(predicted.eq(labels).logical_and(scored).sum().item<int64_t>());
    total += static_cast<double>(scored.sum().item<int64_t>());
  }
  model_->train();
  const auto totals = sum_over_ranks({correct, total});
  correct = totals[0];
  total = totals[1];
  const double accuracy = correct / std::max(total, 1.0);
  const double chance = 1.0 / static_cast<double>(config_.model.vocab_size - config_.model.vocab_size / 2);
  spdlog::info("held-out MQAR accuracy {:.2f}% over {} queries ({} sequences; chance {:.2f}%)",
               100 * accuracy, total, mqar.eval_examples, 100 * chance);
  nlohmann::json result = {{"mqar_accuracy", accuracy},
                           {"queries", static_cast<int64_t>(total)},
                           {"chance", chance},
                           {"step", state_.step}};
  if (is_main()) {
    const std::string text = result.dump(2) + "\n";
    io::write_file_atomic(run_dir_.root / "eval.json", std::as_bytes(std::span(text.data(), text.size())));
  }
  return result;
}

}  // namespace dla::train
