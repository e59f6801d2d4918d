// c10d behind a small interface: the only translation unit that includes c10d's headers.
#include "dla/dist/communicator.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <fmt/ranges.h>

#include <chrono>

namespace dla::dist {

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int64_t progress = -1;  ///< the last step this rank announced
};

namespace {

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::min:
      return c10d::ReduceOp::MIN;
    case ReduceOp::max:
      return c10d::ReduceOp::MAX;
    case ReduceOp::sum:
      break;
  }
  return c10d::ReduceOp::SUM;
}

std::string reason(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  while (!text.empty() &&
         (text.back() == '.' || text.back() == '!' || std::isspace(static_cast<unsigned char>(text.back()))))
    text.pop_back();
  return text;
}

std::string progress_key(int rank) {
  return fmt::format("dla/progress/{}", rank);
}

// The ranks that announced an earlier step than this one: after a timeout, the ones that hang.
std::string lagging_ranks(c10d::Store* store, int world_size, int64_t step) {
  if (store == nullptr || step < 0) return "";
  std::vector<std::string> behind;
  try {
    for (int r = 0; r < world_size; ++r) {
      int64_t theirs = -1;
      if (store->check({progress_key(r)})) {
        const auto bytes = store->get(progress_key(r));
        theirs = std::stoll(std::string(bytes.begin(), bytes.end()));
      }
      if (theirs < step)
        behind.push_back(theirs < 0 ? fmt::format("{} (no step)", r)
                                    : fmt::format("{} (step {})", r, theirs));
    }
  } catch (const std::exception&) {
    return "";  // the store went with rank 0
  }
  return behind.empty() ? "" : fmt::format(" Ranks behind step {}: {}.", step, fmt::join(behind, ", "));
}

// Runs a collective, turning LibTorch's errors into a message that names the rank, what it was doing and,
// when known, which ranks did not get there.
template <class F>
auto guarded(int rank, const char* what, F&& f, const std::function<std::string()>& context = {}) {
  try {
    return f();
  } catch (const CommunicationError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommunicationError(
        fmt::format("rank {}: {} failed: {}.{} Another rank probably died or hung (see its log); "
                    "dist.timeout_s bounds the "
                    "wait",
                    rank, what, reason(e), context ? context() : ""));
  }
}

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                            const DistEnvironment& env, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // GLOO_SOCKET_IFNAME picks the network interfaces, as in PyTorch. All ranks on one node talk over the
  // loopback device, which works where the host name does not resolve.
  if (const auto interfaces = system_getenv("GLOO_SOCKET_IFNAME")) {
    std::string_view rest = *interfaces;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(std::string(rest.substr(0, comma))));
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  } else if (env.local_world_size == env.world_size) {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, options);
}

c10::intrusive_ptr<c10d::Backend> make_nccl([[maybe_unused]] const c10::intrusive_ptr<c10d::Store>& store,
                                            [[maybe_unused]] const DistEnvironment& env,
                                            [[maybe_unused]] std::chrono::milliseconds timeout) {
#ifdef USE_C10D_NCCL
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, options);
#else
  throw UserError("dist.backend = nccl, but this dla was built without CUDA; use gloo (or auto)");
#endif
}

}  // namespace

Communicator::Communicator(const DistEnvironment& env, const DistOptions& options, at::Device device)
    : impl_(std::make_unique<Impl>()), rank_(env.rank), world_size_(env.world_size) {
  impl_->timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000));
  const Backend backend = options.backend != Backend::auto_select ? options.backend
                          : device.is_cuda()                      ? Backend::nccl
                                                                  : Backend::gloo;
  if (backend == Backend::nccl && !device.is_cuda()) {
    throw UserError("dist.backend = nccl needs train.device = cuda; use gloo on the CPU");
  }
  backend_name_ = std::string(config::enum_name(backend));
  spdlog::debug("rank {}: rendezvous at {}:{} with {} ranks", rank_, env.master_addr, env.master_port,
                world_size_);
  guarded(rank_, "the rendezvous", [&] {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(env.master_port);
    store_options.isServer = env.rank == 0;
    store_options.numWorkers = static_cast<size_t>(env.world_size);
    store_options.waitWorkers = true;
    store_options.timeout = impl_->timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    impl_->backend = backend == Backend::nccl ? make_nccl(impl_->store, env, impl_->timeout)
                                              : make_gloo(impl_->store, env, impl_->timeout);
    return 0;
  });
}

Communicator::~Communicator() {
  if (!impl_ || !impl_->backend) return;
  try {
    impl_->backend->shutdown();
  } catch (const std::exception& e) {
    spdlog::warn("rank {}: shutting down the {} process group: {}", rank_, backend_name_, reason(e));
  }
}

void Communicator::announce_step(int64_t step) {
  impl_->progress = step;
  guarded(rank_, "announcing progress to the store", [&] {
    const std::string value = std::to_string(step);
    impl_->store->set(progress_key(rank_), std::vector<uint8_t>(value.begin(), value.end()));
    return 0;
  });
}

std::function<std::string()> Communicator::failure_context() const {
  return [store = impl_->store, world = world_size_, step = impl_->progress] {
    return lagging_ranks(store.get(), world, step);
  };
}

void Communicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  guarded(
      rank_, "all_reduce",
      [&] {
        std::vector<at::Tensor> tensors{tensor};
        c10d::AllreduceOptions options;
        options.reduceOp = to_c10d(op);
        options.timeout = impl_->timeout;
        impl_->backend->allreduce(tensors, options)->wait(impl_->timeout);
        return 0;
      },
      failure_context());
}

PendingCollective Communicator::all_reduce_async(at::Tensor tensor) {
  auto work = guarded(rank_, "all_reduce", [&] {
    std::vector<at::Tensor> tensors{std::move(tensor)};
    c10d::AllreduceOptions options;
    options.timeout = impl_->timeout;
    return impl_->backend->allreduce(tensors, options);
  });
  return PendingCollective([work, rank = rank_, timeout = impl_->timeout, context = failure_context()] {
    guarded(
        rank, "all_reduce", [&] { return work->wait(timeout); }, context);
  });
}

void Communicator::broadcast(at::Tensor& tensor, int root) {
  guarded(
      rank_, "broadcast",
      [&] {
        std::vector<at::Tensor> tensors{tensor};
        c10d::BroadcastOptions options;
        options.rootRank = root;
        options.timeout = impl_->timeout;
        impl_->backend->broadcast(tensors, options)->wait(impl_->timeout);
        return 0;
      },
      failure_context());
}

void Communicator::barrier() {
  guarded(
      rank_, "barrier",
      [&] {
        c10d::BarrierOptions options;
        options.timeout = impl_->timeout;
        impl_->backend->barrier(options)->wait(impl_->timeout);
        return 0;
      },
      failure_context());
}

}  // namespace dla::dist
