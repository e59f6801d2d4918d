// `dla bench layer`: the chunkwise ops of the mixers.
// Shapes: B batch, T tokens, H heads, D head dim.
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <chrono>

#include "dla/bench/bench.h"
#include "dla/bench/kernel_profile.h"
#include "dla/memory/multi_state.h"
#include "dla/ops/gdn.h"
#include "dla/ops/kernels.h"
#include "dla/ops/ssd.h"
#include "dla/ops/tf32_scope.h"
#include "dla/util/error.h"

namespace dla::bench {
namespace {

at::Device pick_device(const std::string& device) {
  if (device == "cuda" || (device == "auto" && torch::cuda::is_available())) {
    if (!torch::cuda::is_available()) throw UserError("--device cuda, but no CUDA device is available");
    return at::Device(at::kCUDA);
  }
  return at::Device(at::kCPU);
}

void synchronize(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Mean milliseconds of `fn` over `iters` runs after `warmup` runs.
template <class Fn>
double time_ms(const at::Device& device, int64_t warmup, int64_t iters, Fn&& fn) {
  for (int64_t i = 0; i < warmup; ++i)
    fn();
  synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i)
    fn();
  synchronize(device);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() /
         static_cast<double>(iters);
}

}  // namespace

nlohmann::json bench_layer(const LayerBenchOptions& o) {
  const bool attention = o.mixer == "sdpa";
  if (o.mixer != "gdn" && o.mixer != "mamba2" && !attention)
    throw UserError("--mixer must be gdn, mamba2 or sdpa, got " + o.mixer);
  if (attention && o.memory != "single")
    throw UserError("--mixer sdpa is softmax attention, which has no memory policy: --memory must be single");
  if (o.dtype != "float32" && o.dtype != "bfloat16") {
    throw UserError("--dtype must be float32 or bfloat16, got " + o.dtype);
  }
  if (o.memory != "single" && o.memory != "fenwick" && o.memory != "dla")
    throw UserError("--memory must be single, fenwick or dla, got " + o.memory);
  if (!o.kernels.empty()) ops::set_kernel_choice(ops::parse_kernel_choice(o.kernels, "--kernels"));
  const at::Device device = pick_device(o.device);
  const auto dtype = o.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  const auto opts = at::TensorOptions().device(device).dtype(dtype);
  const int64_t B = o.batch, T = o.tokens, H = o.heads, D = o.head_dim;

  auto l2 = [](const at::Tensor& t) { return t / t.norm(2, -1, true); };
  const at::Tensor q = l2(at::randn({B, T, H, D}, opts)).requires_grad_();
  const at::Tensor k = l2(at::randn({B, T, H, D}, opts)).requires_grad_();
  const at::Tensor v = at::randn({B, T, H, D}, opts).requires_grad_();
  const at::Tensor g = (-at::rand({B, T, H}, opts.dtype(at::kFloat)) * 0.1).requires_grad_();
  const at::Tensor beta = at::rand({B, T, H}, opts).sigmoid().requires_grad_();
  const double scale = o.mixer == "gdn" ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0;

  memory::MemoryOptions memory_options;
  memory_options.policy = o.memory == "dla"       ? memory::PolicyKind::dla
                          : o.memory == "fenwick" ? memory::PolicyKind::fenwick
                                                  : memory::PolicyKind::single;
  memory_options.capacity = o.capacity;
  memory_options.max_length = std::max(o.max_length, T);
  const int64_t levels = memory_options.num_levels();
  const at::Tensor lam = (at::rand({B, T, H, levels}, opts.dtype(at::kFloat)) + 0.5).requires_grad_();
  const at::Tensor u = at::rand({B, T, H}, opts.dtype(at::kFloat)).requires_grad_();
  const memory::SegmentTable fenwick_table =
      o.memory == "fenwick" ? memory::on_device(memory::fenwick_segments(T, levels - 1), device)
                            : memory::SegmentTable{};
  const memory::Recurrence terms{q, k, v, g, o.mixer == "gdn" ? beta : at::Tensor(), scale};

  auto forward = [&] {
    if (attention) {
      return at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true)
          .transpose(1, 2);
    }
    if (o.memory == "single") {
      return o.mixer == "gdn" ? ops::gdn::chunk(q, k, v, g, beta, scale, {}, o.chunk_size).out
                              : ops::ssd::chunk(q, k, v, g, scale, {}, o.chunk_size).out;
    }
    if (o.memory == "fenwick")
      return memory::chunkwise(terms, {lam, at::Tensor()}, fenwick_table, o.chunk_size).out_BTHV;
    const memory::SegmentTable table =
        memory::dla_segments(u.detach(), {.capacity = o.capacity, .threshold = 0.5});
    return memory::chunkwise(terms, {lam, memory::straight_through_confidence(table, u)}, table, o.chunk_size)
        .out_BTHV;
  };
  const at::Tensor grad_out = at::randn({B, T, H, D}, opts);
  // As in a training step under bf16 autocast: the float32 products of the ops' autograd backward, which runs
  // outside the ops, may use TF32 like their forward.
  const ops::Tf32Scope tf32(ops::tf32_suits(q));
  double fwd_ms = 0;
  {
    at::NoGradGuard no_grad;
    fwd_ms = time_ms(device, o.warmup, o.iters, forward);
  }
  // Each backward starts without input gradients, as in training (a layer's inputs are fresh activations each
  // step) and in Triton's do_bench(grad_to_none=…): otherwise autograd adds every run's gradients to the last
  // run's, kernels that a training step never runs.
  const auto forward_backward = [&] {
    for (const at::Tensor& leaf : {q, k, v, g, beta, lam, u})
      leaf.mutable_grad().reset();
    forward().backward(grad_out);
  };
  const double fwd_bwd_ms = time_ms(device, o.warmup, o.iters, forward_backward);
  nlohmann::json result = {{"mixer", o.mixer},
                           {"memory", o.memory},
                           {"levels", levels},
                           {"op", attention          ? "causal softmax attention (SDPA)"
                                  : o.mixer == "gdn" ? "gated delta rule, chunkwise"
                                                     : "SSD, chunkwise"},
                           {"B", B},
                           {"T", T},
                           {"H", H},
                           {"D", D},
                           {"dtype", o.dtype},
                           {"device", device.str()},
                           {"chunk", o.chunk_size},
                           {"kernels", !attention && ops::use_fused_kernels(q) ? "fused" : "aten"},
                           {"fwd_ms", fwd_ms},
                           {"fwd_bwd_ms", fwd_bwd_ms}};
  if (!o.profile.empty()) {
    result["profile"] = profile_kernels(forward_backward, o.profile, q.is_cuda());
    if (q.is_cuda()) result["profile_by_op"] = kernel_time_by_op(o.profile);
  }
  return result;
}

}  // namespace dla::bench
