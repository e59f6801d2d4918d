// The ranks of a data-parallel job and the collectives between them, over LibTorch's c10d: a TCPStore served
// by rank 0 for the rendezvous, then NCCL on CUDA or Gloo on the CPU. Every failure (a rank that died, a
// collective that timed out) is a CommunicationError naming this rank and the collective.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "dla/dist/environment.h"
#include "dla/dist/options.h"
#include "dla/util/error.h"

namespace dla::dist {

/// A collective failed or timed out; usually another rank died or hung. Its log says why.
class CommunicationError : public UserError {
 public:
  using UserError::UserError;
};

enum class ReduceOp { sum, min, max };

/// A collective in flight; wait() blocks until it is done (and throws CommunicationError if it failed).
class PendingCollective {
 public:
  PendingCollective() = default;
  explicit PendingCollective(std::function<void()> wait) : wait_(std::move(wait)) {}
  void wait() {
    if (wait_) std::exchange(wait_, nullptr)();
  }

 private:
  std::function<void()> wait_;
};

class Communicator {
 public:
  /// Joins the job described by `env`: waits (up to options.timeout_s) for all ranks at the store, then
  /// creates the process group. On CUDA, `device` must be the GPU this rank owns.
  Communicator(const DistEnvironment& env, const DistOptions& options, at::Device device);
  /// Shuts the process group down.
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  const std::string& backend_name() const { return backend_name_; }

  /// Reduces `tensor` over all ranks, in place.
  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::sum);
  /// Starts a sum over all ranks of `tensor`, in place; the result is there after wait().
  PendingCollective all_reduce_async(at::Tensor tensor);
  /// Copies `root`'s `tensor` to every rank.
  void broadcast(at::Tensor& tensor, int root = 0);
  void barrier();

  /// Records in the store that this rank has started `step`. When a collective later times out, its error
  /// lists the ranks that never got to the step: the ones that hang.
  void announce_step(int64_t step);

 private:
  std::function<std::string()> failure_context() const;

  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0;
  int world_size_ = 1;
  std::string backend_name_;
};

}  // namespace dla::dist
