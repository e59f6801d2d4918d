// The training loop. `run()` reads top to bottom: per step, `train_step`, then `log_step`; at the end, the
// held-out evaluation and the loss curve. Everything a checkpoint will need is in `TrainState`.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include <torch/optim/adamw.h>

#include "dla/config/run_config.h"
#include "dla/data/token_dataset.h"
#include "dla/data/tokenizer.h"
#include "dla/dist/communicator.h"
#include "dla/dist/environment.h"
#include "dla/dist/gradient_reducer.h"
#include "dla/eval/suite.h"
#include "dla/model/causal_lm.h"
#include "dla/run/run_directory.h"
#include "dla/train/graphed_step.h"
#include "dla/train/metrics.h"

namespace dla::train {

/// Progress of a run: what resuming needs besides the weights and the optimiser.
struct TrainState {
  int64_t step = 0;          ///< optimiser steps done
  int64_t tokens_seen = 0;   ///< over all ranks
  int64_t samples_seen = 0;  ///< the data cursor: global samples consumed
};

struct StepResult {
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  bool stop = false;  ///< some rank was asked to stop (SIGTERM/SIGINT)
};

class Trainer {
 public:
  /// `dist` places this process in a data-parallel job (dist::read_environment); the default is a single
  /// process. With several ranks the constructor joins the job and copies rank 0's initial weights to all.
  Trainer(const config::ResolvedConfig& resolved, run::RunDirectory run_dir, dist::DistEnvironment dist = {});
  ~Trainer();
  /// Continues from a training checkpoint: "auto" takes the newest intact one in the run directory (reporting
  /// damaged ones; none means a fresh start), anything else is a checkpoint directory that must be intact.
  /// Returns whether a checkpoint was loaded.
  bool resume(const std::string& spec);
  /// Trains until train.steps, writing checkpoints as `checkpoint` says, and returns the final held-out
  /// metrics (e.g. {"mqar_accuracy": ...}). A SIGTERM/SIGINT, or reaching `stop_at` (a step before
  /// train.steps), ends it early: the step is finished, a checkpoint saved, and {"stopped_at_step": N}
  /// returned. The learning-rate schedule always runs to train.steps, so a stopped run resumes exactly.
  nlohmann::json run(std::optional<int64_t> stop_at = std::nullopt);
  const TrainState& state() const { return state_; }

  model::CausalLM& model() { return model_; }

 private:
  /// One optimiser step; `stop_requested` is this rank's stop signal, combined over ranks into the result.
  StepResult train_step(bool stop_requested);
  /// The forward and backward pass of one micro-batch on the device: gradients accumulate into the
  /// parameters; returns the loss (detached) divided by the micro-batches per step.
  at::Tensor forward_backward(const at::Tensor& ids, const at::Tensor& labels);
  bool is_main() const { return dist_.rank == 0; }
  /// Sums `values` (float64) over ranks; identity on one process.
  std::vector<double> sum_over_ranks(std::vector<double> values);
  void save_checkpoint();
  /// The training data's tokenizer fingerprint (hex); empty for generated data.
  std::string tokenizer_fingerprint() const;
  void log_step(const StepResult& result, double seconds);
  nlohmann::json evaluate();
  /// Runs the `eval` section's suite on the current weights (sharded over the ranks) and logs it.
  void run_eval_suite();
  nlohmann::json evaluate_mqar();
  nlohmann::json evaluate_validation_loss();
  /// The micro-batch `micro` of this rank at `step`: ids and labels on the CPU.
  std::pair<at::Tensor, at::Tensor> micro_batch(int64_t step, int64_t micro);

  config::ResolvedConfig resolved_;  ///< written with the final model
  config::RunConfig config_;
  run::RunDirectory run_dir_;
  dist::DistEnvironment dist_;
  at::Device device_;
  model::CausalLM model_{nullptr};
  std::unique_ptr<dist::Communicator> communicator_;  ///< with several ranks
  std::unique_ptr<dist::GradientReducer> reducer_;    ///< with several ranks
  std::unique_ptr<data::BatchLoader> train_loader_;   ///< data.source = tokens
  std::unique_ptr<data::BatchLoader> val_loader_;     ///< data.source = tokens, when the data has a val split
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<GraphedStep> graphed_step_;        ///< train.cuda_graphs
  std::optional<eval::SuiteSpec> eval_suite_;        ///< eval.suite, read at the start
  std::unique_ptr<data::Tokenizer> eval_tokenizer_;  ///< data.tokenizer, else byte
  TrainState state_;
  std::unique_ptr<MetricsLog> metrics_;
  std::vector<double> curve_steps_, curve_losses_;
  double seconds_since_log_ = 0;
  double seconds_total_ = 0;
  int64_t tokens_since_log_ = 0;
};

/// Mean cross-entropy over positions whose label is not −100.
at::Tensor masked_loss(const at::Tensor& logits_BTV, const at::Tensor& labels_BT);

}  // namespace dla::train
