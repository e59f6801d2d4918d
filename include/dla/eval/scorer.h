// The model side of evaluation, with lm-evaluation-harness's semantics: log-likelihoods of continuations
// (with the greedy check), rolling windows for whole-text perplexity, and greedy generation through the
// recurrent caches. Requests can be shared out over the ranks of a data-parallel job.
// Shapes: B batch, T tokens, V vocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dla/data/tokenizer.h"
#include "dla/dist/communicator.h"
#include "dla/model/causal_lm.h"

namespace dla::eval {

struct LoglikelihoodRequest {
  std::vector<int64_t> context;
  std::vector<int64_t> continuation;
};

struct Loglikelihood {
  double value = 0;     ///< Σ log p(continuation token | everything before it), natural log
  bool greedy = false;  ///< argmax reproduces every continuation token
};

/// Tokens of a (context, continuation) pair as lm-evaluation-harness splits them: trailing spaces of the
/// context move to the continuation, the whole string is encoded and split after the context's tokens; an
/// empty context is the end-of-text token.
LoglikelihoodRequest encode_pair(const data::Tokenizer& tokenizer, std::string context,
                                 std::string continuation);

/// lm-evaluation-harness's rolling windows over a document: every token is predicted exactly once, the first
/// window from `prefix_token`, later ones from up to max_length previous tokens.
std::vector<LoglikelihoodRequest> rolling_windows(const std::vector<int64_t>& tokens, int64_t prefix_token,
                                                  int64_t max_length);

/// This process's share of the requests in a job of several ranks (round-robin by index).
struct Shard {
  int rank = 0;
  int world_size = 1;
  dist::Communicator* communicator = nullptr;

  bool mine(size_t index) const { return static_cast<int>(index % static_cast<size_t>(world_size)) == rank; }
  /// Sums `values` over the ranks, in place (each rank contributes zeros where it did no work).
  void sum(std::vector<double>& values, at::Device device) const;
};

/// Mean loss by position in the model's input, summed over requests: what a loss-by-context-position
/// plot shows.
struct PositionLoss {
  std::vector<double> sum;
  std::vector<double> count;
  void add(size_t position, double loss);
};

class Scorer {
 public:
  Scorer(model::CausalLMImpl& model, at::Device device, int64_t batch_size, Shard shard = {});

  /// Log-likelihood of each request's continuation. The model sees at most `max_length` tokens: longer
  /// contexts lose tokens on the left. Requests are batched longest first with right padding, which a causal
  /// model does not see, so results do not depend on the batch size. With a shard, every rank gets all
  /// results.
  std::vector<Loglikelihood> loglikelihood(const std::vector<LoglikelihoodRequest>& requests,
                                           int64_t max_length, PositionLoss* positions = nullptr);

  /// Greedy continuation of `prompt` (left-truncated to max_length − max_new tokens): a chunkwise prefill,
  /// then recurrent decoding; stops early at `stop_token` (when ≥ 0).
  std::vector<int64_t> generate(std::vector<int64_t> prompt, int64_t max_new, int64_t max_length,
                                int64_t stop_token = -1);

  const Shard& shard() const { return shard_; }
  model::CausalLMImpl& model() { return model_; }
  at::Device device() const { return device_; }

 private:
  model::CausalLMImpl& model_;
  at::Device device_;
  int64_t batch_size_;
  Shard shard_;
};

}  // namespace dla::eval
