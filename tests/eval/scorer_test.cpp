// Requests as lm-evaluation-harness forms them, batch-size invariance and sharding over ranks.
#include "dla/eval/scorer.h"

#include <ATen/ops/log_softmax.h>

#include "catch.h"
#include "dist/dist_testing.h"
#include "eval/eval_testing.h"

namespace dla::eval {
namespace {

model::CausalLM random_model() {
  torch::manual_seed(7);
  return model::CausalLM(test::small_model_options(258, 2));
}

std::vector<LoglikelihoodRequest> some_requests() {
  const data::ByteTokenizer bytes;
  std::vector<LoglikelihoodRequest> requests;
  for (int i = 0; i < 11; ++i)
    requests.push_back(
        encode_pair(bytes, std::string(static_cast<size_t>(3 + 5 * i), 'a' + i % 7) + "?",
                    fmt::format(" answer {}", std::string(static_cast<size_t>(i % 4 + 1), 'x'))));
  return requests;
}

}  // namespace

TEST_CASE("encode_pair moves trailing spaces to the continuation and conditions empty contexts on EOS",
          "[eval]") {
  const data::ByteTokenizer bytes;
  const auto r = encode_pair(bytes, "ab  ", "c");
  CHECK(r.context == std::vector<int64_t>{'a', 'b'});
  CHECK(r.continuation == std::vector<int64_t>{' ', ' ', 'c'});
  const auto empty = encode_pair(bytes, "", "hi");
  CHECK(empty.context == std::vector<int64_t>{bytes.eos_id()});
  CHECK(empty.continuation == std::vector<int64_t>{'h', 'i'});
}

TEST_CASE("rolling windows predict every token once, with at most max_length tokens of input", "[eval]") {
  const std::vector<int64_t> tokens = {1, 2, 3, 4, 5, 6, 7};
  const auto windows = rolling_windows(tokens, 0, 3);
  REQUIRE(windows.size() == 3);
  CHECK(windows[0].context == std::vector<int64_t>{0});
  CHECK(windows[0].continuation == std::vector<int64_t>{1, 2, 3});
  CHECK(windows[1].context == std::vector<int64_t>{3});
  CHECK(windows[1].continuation == std::vector<int64_t>{4, 5, 6});
  // The last window predicts one token from the max_length tokens before it (input 4 5 6).
  CHECK(windows[2].context == std::vector<int64_t>{4, 5, 6});
  CHECK(windows[2].continuation == std::vector<int64_t>{7});
  std::vector<int64_t> predicted;
  for (const auto& w : windows) {
    predicted.insert(predicted.end(), w.continuation.begin(), w.continuation.end());
    CHECK(w.context.size() + w.continuation.size() - 1 <= 3);
  }
  CHECK(predicted == tokens);
}

TEST_CASE("log-likelihoods equal the model's log-softmax and do not depend on the batch size", "[eval]") {
  auto model = random_model();
  const auto requests = some_requests();
  Scorer one(*model, at::kCPU, 1);
  const auto reference = one.loglikelihood(requests, 64);
  // By hand for request 3: log-softmax of the forward pass over context + continuation.
  {
    at::NoGradGuard no_grad;
    const auto& r = requests[3];
    std::vector<int64_t> all = r.context;
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    const at::Tensor ids = at::tensor(all, at::kLong).unsqueeze(0);
    const at::Tensor log_probs = at::log_softmax(model->forward(ids)[0], -1);
    double expected = 0;
    for (size_t j = 0; j < r.continuation.size(); ++j)
      expected += log_probs[static_cast<int64_t>(r.context.size() + j - 1)][r.continuation[j]].item<double>();
    CHECK(std::abs(reference[3].value - expected) < 1e-4);
  }
  for (const int64_t batch : {3, 8, 32}) {
    CAPTURE(batch);
    Scorer batched(*model, at::kCPU, batch);
    const auto results = batched.loglikelihood(requests, 64);
    for (size_t i = 0; i < requests.size(); ++i) {
      CAPTURE(i);
      CHECK(std::abs(results[i].value - reference[i].value) < 1e-4);
      CHECK(results[i].greedy == reference[i].greedy);
    }
  }
}

TEST_CASE("requests shared out over ranks give the single-process results", "[eval][dist]") {
  const auto requests = some_requests();
  auto single_model = random_model();
  const auto expected = Scorer(*single_model, at::kCPU, 4).loglikelihood(requests, 64);
  std::vector<std::vector<Loglikelihood>> got(3);
  // Built here: the threads would share the global random generator while initialising.
  std::vector<model::CausalLM> models = {random_model(), random_model(), random_model()};
  test::run_ranks(3, [&](dist::Communicator& c) {
    Scorer scorer(*models[c.rank()], at::kCPU, 4, {c.rank(), c.world_size(), &c});
    got[c.rank()] = scorer.loglikelihood(requests, 64);
  });
  for (int r = 0; r < 3; ++r) {
    REQUIRE(got[r].size() == expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      CAPTURE(r, i);
      CHECK(std::abs(got[r][i].value - expected[i].value) < 1e-4);
    }
  }
}

}  // namespace dla::eval
