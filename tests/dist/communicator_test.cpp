// Collectives, gradient buckets and replica checks over Gloo, with the ranks as threads of this process.
#include "dla/dist/communicator.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "catch.h"
#include "dist/dist_testing.h"
#include "dla/dist/gradient_reducer.h"
#include "dla/dist/launcher.h"
#include "dla/dist/replicas.h"

namespace dla::dist {
namespace {

using test::run_ranks;
using test::thread_rank;

// Two layers and a parameter the loss never reaches.
struct SmallNet : torch::nn::Module {
  SmallNet() {
    first = register_module("first", torch::nn::Linear(4, 3));
    second = register_module("second", torch::nn::Linear(3, 2));
    unused = register_parameter("unused", at::ones({5}));
    for (auto& p : parameters()) {
      at::NoGradGuard no_grad;
      p.copy_(at::arange(p.numel(), at::kFloat).reshape(p.sizes()).mul(0.1).sin());
    }
  }
  at::Tensor forward(const at::Tensor& x) { return second->forward(first->forward(x).tanh()); }
  torch::nn::Linear first{nullptr}, second{nullptr};
  at::Tensor unused;
};

at::Tensor rank_input(int rank, int micro) {
  return at::arange(8, at::kFloat).reshape({2, 4}).add(rank * 10 + micro).cos();
}

}  // namespace

TEST_CASE("all_reduce, broadcast and barrier over Gloo", "[dist]") {
  const int world = 3;
  std::vector<std::vector<float>> sums(world), mins(world), maxs(world), broadcasts(world), asyncs(world);
  run_ranks(world, [&](Communicator& c) {
    const int r = c.rank();
    at::Tensor sum = at::tensor({1.0f * r, 2.0f}), low = at::tensor({1.0f * r}),
               high = at::tensor({1.0f * r});
    c.all_reduce(sum);
    c.all_reduce(low, ReduceOp::min);
    c.all_reduce(high, ReduceOp::max);
    at::Tensor data = at::full({2}, 7.0f + r);
    c.broadcast(data, /*root=*/1);
    at::Tensor pending = at::full({3}, 1.0f);
    auto work = c.all_reduce_async(pending);
    c.barrier();
    work.wait();
    auto vec = [](const at::Tensor& t) {
      return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
    };
    sums[r] = vec(sum);
    mins[r] = vec(low);
    maxs[r] = vec(high);
    broadcasts[r] = vec(data);
    asyncs[r] = vec(pending);
  });
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    CHECK(sums[r] == std::vector<float>{3.0f, 6.0f});
    CHECK(mins[r] == std::vector<float>{0.0f});
    CHECK(maxs[r] == std::vector<float>{2.0f});
    CHECK(broadcasts[r] == std::vector<float>{8.0f, 8.0f});
    CHECK(asyncs[r] == std::vector<float>{3.0f, 3.0f, 3.0f});
  }
}

TEST_CASE("GradientReducer averages accumulated gradients over ranks, bucket by bucket", "[dist]") {
  const int world = 2, micro_batches = 2;
  // The reference: every rank's gradients summed over its micro-batches, averaged over ranks.
  std::vector<at::Tensor> expected;
  {
    SmallNet net;
    for (int r = 0; r < world; ++r)
      for (int m = 0; m < micro_batches; ++m)
        net.forward(rank_input(r, m)).square().sum().backward();
    for (auto& p : net.parameters())
      expected.push_back(p.grad().defined() ? p.grad() / world : at::zeros_like(p));
  }
  for (const int64_t bucket_bytes : {int64_t{4}, int64_t{1} << 20}) {
    CAPTURE(bucket_bytes);
    std::vector<std::vector<at::Tensor>> grads(world);
    std::vector<int64_t> buckets(world);
    run_ranks(world, [&](Communicator& c) {
      SmallNet net;
      GradientReducer reducer(c, net.parameters(), bucket_bytes);
      buckets[c.rank()] = reducer.num_buckets();
      for (int m = 0; m < micro_batches; ++m) {
        reducer.set_sync(m + 1 == micro_batches);
        net.forward(rank_input(c.rank(), m)).square().sum().backward();
      }
      reducer.finish();
      for (auto& p : net.parameters())
        grads[c.rank()].push_back(p.grad().clone());
    });
    // Small buckets: one per parameter; large: one for all.
    CHECK(buckets[0] == (bucket_bytes == 4 ? 5 : 1));
    for (int r = 0; r < world; ++r) {
      REQUIRE(grads[r].size() == expected.size());
      for (size_t i = 0; i < expected.size(); ++i) {
        CAPTURE(r, i);
        CHECK(at::allclose(grads[r][i], expected[i], 1e-6, 1e-6));
      }
    }
  }
}

TEST_CASE("bucket all-reduces start from the hooks, during the backward pass", "[dist]") {
  std::vector<int64_t> started(2), total(2);
  run_ranks(2, [&](Communicator& c) {
    torch::nn::Sequential net(torch::nn::Linear(4, 8), torch::nn::Tanh(), torch::nn::Linear(8, 2));
    GradientReducer reducer(c, net->parameters(), 4);
    net->forward(rank_input(c.rank(), 0)).sum().backward();
    // Every parameter got its gradient, so every bucket is on its way before finish() is called.
    started[c.rank()] = reducer.started_buckets();
    total[c.rank()] = reducer.num_buckets();
    reducer.finish();
  });
  CHECK(total[0] == 4);
  CHECK(started == total);
}

TEST_CASE("replicas are compared by digest, and broadcast_module makes them equal", "[dist]") {
  const int world = 2;
  std::vector<std::string> before(world);
  std::vector<bool> verified_after(world, false);
  run_ranks(world, [&](Communicator& c) {
    SmallNet net;
    if (c.rank() == 1) {
      at::NoGradGuard no_grad;
      net.first->weight.add_(1e-3);
    }
    try {
      verify_replicas(c, net, "in the test");
    } catch (const CommunicationError& e) {
      before[c.rank()] = e.what();
    }
    broadcast_module(c, net);
    verify_replicas(c, net, "after the broadcast");
    verified_after[c.rank()] = true;
  });
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    CHECK_THAT(before[r], test::has_substr("replicas differ across ranks in the test"));
    CHECK(verified_after[r]);
  }
}

TEST_CASE("a rank that never joins makes the rendezvous fail within the timeout", "[dist]") {
  const auto start = std::chrono::steady_clock::now();
  DistOptions options;
  options.timeout_s = 2;
  // Rank 0 of 2 alone: the store waits for the second worker, then gives up.
  CHECK_THROWS_WITH(Communicator(thread_rank(0, 2, free_port()), options, at::Device(at::kCPU)),
                    test::has_substr("rank 0: the rendezvous failed"));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
}

}  // namespace dla::dist

namespace dla::dist {

TEST_CASE("NCCL on the GPU: collectives and the gradient reducer", "[dist][cuda]") {
  const int gpus = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0;
  if (gpus == 0) {
    WARN("no CUDA device: the NCCL path is not exercised on this machine");
    return;
  }
  // One rank per GPU, as threads; on a one-GPU machine a job of one rank still runs NCCL's code path.
  const int world = std::min(gpus, 2);
  DistOptions options;
  options.backend = Backend::nccl;
  options.timeout_s = 60;
  const auto gpu = [](int r) { return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(r)); };
  std::vector<std::vector<float>> sums(world);
  std::vector<std::vector<at::Tensor>> grads(world);
  run_ranks(
      world,
      [&](Communicator& c) {
        const int r = c.rank();
        c10::impl::getDeviceGuardImpl(at::kCUDA)->setDevice(gpu(r));
        at::Tensor t = at::full({3}, 1.0f + r, at::TensorOptions().device(gpu(r)));
        c.all_reduce(t);
        c.barrier();
        t = t.cpu();
        sums[r] = std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + 3);
        SmallNet net;
        net.to(gpu(r));
        GradientReducer reducer(c, net.parameters(), 16);
        for (int m = 0; m < 2; ++m) {
          reducer.set_sync(m == 1);
          net.forward(rank_input(r, m).to(gpu(r))).square().sum().backward();
        }
        reducer.finish();
        for (auto& p : net.parameters())
          grads[r].push_back(p.grad().cpu());
      },
      options, gpu);
  SmallNet reference;
  for (int r = 0; r < world; ++r)
    for (int m = 0; m < 2; ++m)
      reference.forward(rank_input(r, m)).square().sum().backward();
  const float total = world == 1 ? 1.0f : 3.0f;
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    CHECK(sums[r] == std::vector<float>(3, total));
    const auto params = reference.parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor expected =
          params[i].grad().defined() ? params[i].grad() / world : at::zeros_like(params[i]);
      CHECK(at::allclose(grads[r][i], expected, 1e-5, 1e-5));
    }
  }
}

}  // namespace dla::dist
