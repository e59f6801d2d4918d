// The `dist` section of the run config: how the ranks of a data-parallel job talk to each other.
#pragma once

#include <cstdint>

#include "dla/config/schema.h"

namespace dla::dist {

enum class Backend { auto_select, gloo, nccl };

}  // namespace dla::dist

template <>
struct dla::config::EnumNames<dla::dist::Backend> {
  static constexpr std::array<std::string_view, 3> names{"auto", "gloo", "nccl"};
};

namespace dla::dist {

struct DistOptions {
  Backend backend = Backend::auto_select;  ///< auto: NCCL on CUDA, Gloo on the CPU
  double timeout_s = 300;                  ///< rendezvous and every collective
  double bucket_mb = 25;                   ///< gradients per all-reduce

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("backend", backend, "Collective backend: auto (NCCL on CUDA, Gloo on the CPU), gloo or nccl.");
    v.field("timeout_s", timeout_s,
            "Seconds a rank waits for the others, at rendezvous and in every collective, before the job "
            "fails with an error naming the rank (a dead or hung worker).",
            Bounds::positive());
    v.field("bucket_mb", bucket_mb,
            "Size of a gradient bucket in MB; a bucket is all-reduced as soon as its gradients are ready, "
            "during the backward pass.",
            Bounds::positive());
  }
};

}  // namespace dla::dist
