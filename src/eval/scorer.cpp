// Batched log-likelihoods and greedy generation.
#include "dla/eval/scorer.h"

#include <ATen/ops/log_softmax.h>

#include <numeric>

#include "dla/infer/generate.h"
#include "dla/util/error.h"

namespace dla::eval {

LoglikelihoodRequest encode_pair(const data::Tokenizer& tokenizer, std::string context,
                                 std::string continuation) {
  const size_t kept = context.find_last_not_of(' ');
  const size_t spaces = kept == std::string::npos ? context.size() : context.size() - kept - 1;
  if (spaces > 0) {
    continuation = context.substr(context.size() - spaces) + continuation;
    context.resize(context.size() - spaces);
  }
  LoglikelihoodRequest request;
  if (context.empty()) {
    request.context = {tokenizer.eos_id()};
    request.continuation = tokenizer.encode(continuation);
    return request;
  }
  const auto whole = tokenizer.encode(context + continuation);
  const auto context_tokens = tokenizer.encode(context);
  const size_t split = std::min(context_tokens.size(), whole.size());
  request.context.assign(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(split));
  request.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(split), whole.end());
  return request;
}

std::vector<LoglikelihoodRequest> rolling_windows(const std::vector<int64_t>& tokens, int64_t prefix_token,
                                                  int64_t max_length) {
  std::vector<LoglikelihoodRequest> windows;
  if (tokens.empty()) return windows;
  const auto n = static_cast<int64_t>(tokens.size());
  const auto at = [&](int64_t i) { return tokens.begin() + i; };
  const int64_t first = std::min(max_length, n);
  windows.push_back({{prefix_token}, {tokens.begin(), at(first)}});
  for (int64_t predicted = first; predicted < n;) {
    const int64_t length = std::min(n - predicted, max_length);
    const int64_t end = predicted + length;
    // Input tokens [end − max_length − 1, end − 1) predict [end − length, end): the context is what precedes.
    const int64_t input_begin = std::max<int64_t>(0, end - max_length - 1);
    windows.push_back({{at(input_begin), at(predicted)}, {at(predicted), at(end)}});
    predicted = end;
  }
  return windows;
}

void Shard::sum(std::vector<double>& values, at::Device device) const {
  if (communicator == nullptr || world_size == 1 || values.empty()) return;
  at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble)).to(device);
  communicator->all_reduce(t);
  t = t.cpu();
  std::copy(t.const_data_ptr<double>(), t.const_data_ptr<double>() + t.numel(), values.begin());
}

void PositionLoss::add(size_t position, double loss) {
  if (position >= sum.size()) {
    sum.resize(position + 1, 0.0);
    count.resize(position + 1, 0.0);
  }
  sum[position] += loss;
  count[position] += 1;
}

Scorer::Scorer(model::CausalLMImpl& model, at::Device device, int64_t batch_size, Shard shard)
    : model_(model), device_(device), batch_size_(std::max<int64_t>(1, batch_size)), shard_(shard) {}

std::vector<Loglikelihood> Scorer::loglikelihood(const std::vector<LoglikelihoodRequest>& requests,
                                                 int64_t max_length, PositionLoss* positions) {
  at::NoGradGuard no_grad;
  model_.eval();
  // The model input of each request: context + continuation without its last token, at most max_length.
  struct Input {
    size_t index;
    std::vector<int64_t> tokens;
    int64_t continuation;
  };
  std::vector<Input> inputs;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (!shard_.mine(i)) continue;
    const auto& r = requests[i];
    if (r.continuation.empty()) throw UserError("an evaluation request has an empty continuation");
    if (static_cast<int64_t>(r.continuation.size()) > max_length) {
      throw UserError(fmt::format("a continuation of {} tokens does not fit max_length {}",
                                  r.continuation.size(), max_length));
    }
    std::vector<int64_t> all = r.context;
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    all.pop_back();
    if (static_cast<int64_t>(all.size()) > max_length) all.erase(all.begin(), all.end() - max_length);
    inputs.push_back({i, std::move(all), static_cast<int64_t>(r.continuation.size())});
  }
  std::stable_sort(inputs.begin(), inputs.end(),
                   [](const Input& a, const Input& b) { return a.tokens.size() > b.tokens.size(); });

  std::vector<double> values(requests.size() * 2, 0.0);  // (log-likelihood, greedy) per request
  std::vector<double> position_sums, position_counts;
  for (size_t begin = 0; begin < inputs.size(); begin += static_cast<size_t>(batch_size_)) {
    const size_t end = std::min(inputs.size(), begin + static_cast<size_t>(batch_size_));
    const auto T = static_cast<int64_t>(inputs[begin].tokens.size());
    at::Tensor ids_BT = at::zeros({static_cast<int64_t>(end - begin), T}, at::kLong);
    for (size_t b = begin; b < end; ++b) {
      const auto& tokens = inputs[b].tokens;
      ids_BT[static_cast<int64_t>(b - begin)]
          .narrow(0, 0, static_cast<int64_t>(tokens.size()))
          .copy_(at::tensor(tokens, at::kLong));
    }
    const at::Tensor logits_BTV = model_.forward(ids_BT.to(device_));
    for (size_t b = begin; b < end; ++b) {
      const Input& input = inputs[b];
      const auto& request = requests[input.index];
      const auto length = static_cast<int64_t>(input.tokens.size());
      const int64_t first = length - input.continuation;
      const at::Tensor log_probs =
          at::log_softmax(
              logits_BTV[static_cast<int64_t>(b - begin)].narrow(0, first, input.continuation).to(at::kFloat),
              -1)
              .cpu();
      const at::Tensor targets = at::tensor(request.continuation, at::kLong);
      const at::Tensor picked = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1).to(at::kDouble);
      const bool greedy = log_probs.argmax(-1).equal(targets);
      values[2 * input.index] = picked.sum().item<double>();
      values[2 * input.index + 1] = greedy ? 1.0 : 0.0;
      if (positions != nullptr) {
        const double* p = picked.const_data_ptr<double>();
        for (int64_t j = 0; j < input.continuation; ++j)
          positions->add(static_cast<size_t>(first + j), -p[j]);
      }
    }
  }
  shard_.sum(values, device_);
  if (positions != nullptr && shard_.world_size > 1) {
    // Positions are below max_length on every rank, so that length lines the ranks' sums up.
    positions->sum.resize(static_cast<size_t>(max_length), 0.0);
    positions->count.resize(static_cast<size_t>(max_length), 0.0);
    shard_.sum(positions->sum, device_);
    shard_.sum(positions->count, device_);
  }
  std::vector<Loglikelihood> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i)
    results[i] = {values[2 * i], values[2 * i + 1] > 0.5};
  return results;
}

std::vector<int64_t> Scorer::generate(std::vector<int64_t> prompt, int64_t max_new, int64_t max_length,
                                      int64_t stop_token) {
  const int64_t room = std::max<int64_t>(1, max_length - max_new);
  if (static_cast<int64_t>(prompt.size()) > room) prompt.erase(prompt.begin(), prompt.end() - room);
  auto tokens = infer::generate(model_, prompt, max_new, infer::SamplingOptions{}).tokens;
  if (stop_token >= 0) {
    const auto stop = std::find(tokens.begin(), tokens.end(), stop_token);
    tokens.erase(stop, tokens.end());
  }
  return tokens;
}

}  // namespace dla::eval
