// Bucketed gradient all-reduce from autograd hooks.
#include "dla/dist/gradient_reducer.h"

namespace dla::dist {

GradientReducer::GradientReducer(Communicator& communicator, const std::vector<at::Tensor>& parameters,
                                 int64_t bucket_bytes)
    : communicator_(communicator) {
  for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
    if (!it->requires_grad()) continue;
    const at::Tensor& p = *it;
    const bool new_bucket =
        buckets_.empty() ||
        buckets_.back().buffer.numel() * buckets_.back().buffer.element_size() >= bucket_bytes ||
        buckets_.back().buffer.scalar_type() != p.scalar_type() ||
        buckets_.back().buffer.device() != p.device();
    if (new_bucket) buckets_.push_back({at::empty({0}, p.options().requires_grad(false)), {}, 0, {}, false});
    Bucket& bucket = buckets_.back();
    slots_.push_back({p, static_cast<int64_t>(buckets_.size()) - 1, bucket.buffer.numel(), false});
    bucket.slots.push_back(static_cast<int64_t>(slots_.size()) - 1);
    bucket.buffer = at::empty({bucket.buffer.numel() + p.numel()}, bucket.buffer.options());
  }
  for (int64_t i = 0; i < static_cast<int64_t>(slots_.size()); ++i) {
    // The hook sees the gradient of this backward before it is added to .grad.
    hook_ids_.push_back(slots_[i].parameter.register_hook([this, i](const at::Tensor& grad) {
      if (sync_) on_gradient(i, grad);
    }));
  }
  reset();
  spdlog::debug("rank {}: {} parameters in {} gradient buckets", communicator_.rank(), slots_.size(),
                buckets_.size());
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < hook_ids_.size(); ++i)
    slots_[i].parameter.remove_hook(hook_ids_[i]);
  for (auto& bucket : buckets_) {
    try {
      bucket.reduction.wait();
    } catch (const std::exception&) {
      // The error was (or will be) reported by whoever called finish(); a destructor must not throw.
    }
  }
}

void GradientReducer::reset() {
  for (auto& slot : slots_)
    slot.ready = false;
  for (auto& bucket : buckets_) {
    bucket.pending = static_cast<int64_t>(bucket.slots.size());
    bucket.started = false;
  }
  next_bucket_ = 0;
}

void GradientReducer::on_gradient(int64_t index, const at::Tensor& grad) {
  Slot& slot = slots_[index];
  if (slot.ready) return;
  Bucket& bucket = buckets_[slot.bucket];
  at::Tensor view = bucket.buffer.narrow(0, slot.offset, slot.parameter.numel()).view_as(slot.parameter);
  // The bucket holds what .grad will hold after this backward: earlier micro-batches plus this one.
  const at::Tensor& accumulated = slot.parameter.grad();
  if (accumulated.defined()) {
    at::add_out(view, accumulated, grad);
  } else {
    view.copy_(grad);
  }
  view.div_(communicator_.world_size());
  slot.ready = true;
  if (--bucket.pending == 0) start_ready_buckets();
}

void GradientReducer::start_ready_buckets() {
  while (next_bucket_ < num_buckets() && buckets_[next_bucket_].pending == 0) {
    Bucket& bucket = buckets_[next_bucket_++];
    bucket.reduction = communicator_.all_reduce_async(bucket.buffer);
    bucket.started = true;
  }
}

void GradientReducer::finish() {
  // Parameters the loss did not reach contribute their current .grad (or zero), so every rank still
  // starts every bucket, in the same order.
  for (auto& slot : slots_) {
    if (slot.ready) continue;
    Bucket& bucket = buckets_[slot.bucket];
    at::Tensor view = bucket.buffer.narrow(0, slot.offset, slot.parameter.numel()).view_as(slot.parameter);
    const at::Tensor& grad = slot.parameter.grad();
    if (grad.defined()) {
      view.copy_(grad).div_(communicator_.world_size());
    } else {
      view.zero_();
    }
    slot.ready = true;
    --bucket.pending;
  }
  start_ready_buckets();
  for (auto& bucket : buckets_)
    bucket.reduction.wait();
  for (auto& slot : slots_) {
    const at::Tensor reduced =
        buckets_[slot.bucket].buffer.narrow(0, slot.offset, slot.parameter.numel()).view_as(slot.parameter);
    at::Tensor& grad = slot.parameter.mutable_grad();
    if (grad.defined()) {
      grad.copy_(reduced);
    } else {
      grad = reduced.clone();
    }
  }
  reset();
}

}  // namespace dla::dist
