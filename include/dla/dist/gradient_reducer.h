// Data-parallel gradient averaging that overlaps the backward pass: parameters are grouped into buckets of
// about `bucket_bytes`, in reverse order of registration (roughly the order backward produces their
// gradients), and each bucket's all-reduce starts from an autograd hook as soon as its last gradient is
// ready. Buckets start in index order on every rank, so the collectives match across ranks.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "dla/dist/communicator.h"

namespace dla::dist {

class GradientReducer {
 public:
  /// Hooks every parameter that requires a gradient. `parameters` must be the same list on every rank.
  GradientReducer(Communicator& communicator, const std::vector<at::Tensor>& parameters,
                  int64_t bucket_bytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  /// Whether the next backward passes communicate: off for all micro-batches but the last of a step, whose
  /// gradients then carry the accumulated sum.
  void set_sync(bool sync) { sync_ = sync; }
  /// After a synchronising backward: starts buckets whose parameters got no gradient, waits for all, and
  /// writes the average over ranks into every parameter's .grad.
  void finish();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  /// Buckets whose all-reduce has started in the current backward pass (all of them after finish()).
  int64_t started_buckets() const { return next_bucket_; }

 private:
  struct Slot {
    at::Tensor parameter;
    int64_t bucket = 0;
    int64_t offset = 0;  ///< elements into the bucket's buffer
    bool ready = false;
  };
  struct Bucket {
    at::Tensor buffer;  ///< the flat gradients of its parameters, reduced in place
    std::vector<int64_t> slots;
    int64_t pending = 0;  ///< parameters whose gradient has not arrived in this backward
    PendingCollective reduction;
    bool started = false;
  };

  void on_gradient(int64_t slot, const at::Tensor& grad);
  void start_ready_buckets();
  void reset();

  Communicator& communicator_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<unsigned> hook_ids_;
  int64_t next_bucket_ = 0;
  bool sync_ = true;
};

}  // namespace dla::dist
