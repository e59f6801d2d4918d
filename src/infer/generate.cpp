// Prefill, then decode token by token through the caches.
// Shapes: B batch (1 here), T tokens, V vocabulary.
#include "dla/infer/generate.h"

#include <chrono>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace dla::infer {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int64_t pick_token(const at::Tensor& logits_V, const SamplingOptions& sampling, at::Generator& generator) {
  if (sampling.temperature <= 0) return logits_V.argmax().item<int64_t>();
  at::Tensor logits = logits_V.to(at::kCPU, at::kFloat) / sampling.temperature;
  if (sampling.top_k > 0 && sampling.top_k < logits.size(0)) {
    const at::Tensor kth = std::get<0>(logits.topk(sampling.top_k)).min();
    logits = logits.masked_fill(logits < kth, -INFINITY);
  }
  return at::multinomial(at::softmax(logits, 0), 1, /*replacement=*/false, generator).item<int64_t>();
}

}  // namespace

Generation generate(model::CausalLMImpl& model, const std::vector<int64_t>& prompt, int64_t max_new,
                    const SamplingOptions& sampling) {
  TORCH_CHECK(!prompt.empty(), "generate: the prompt needs at least one token");
  at::NoGradGuard no_grad;
  model.eval();
  const at::Device device = model.embeddings->weight.device();
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(sampling.seed);
  model::GenerationCache cache;
  Generation result;

  auto start = std::chrono::steady_clock::now();
  at::Tensor logits_1TV = model.forward(at::tensor(prompt, at::kLong).unsqueeze(0).to(device), &cache);
  result.prefill_seconds = seconds_since(start);
  start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < max_new; ++i) {
    const int64_t token = pick_token(logits_1TV[0][-1], sampling, generator);
    result.tokens.push_back(token);
    if (i + 1 == max_new) break;
    logits_1TV = model.forward(at::full({1, 1}, token, at::TensorOptions(at::kLong).device(device)), &cache);
  }
  result.decode_seconds = seconds_since(start);
  result.cache_bytes = cache.size_bytes();
  return result;
}

}  // namespace dla::infer
