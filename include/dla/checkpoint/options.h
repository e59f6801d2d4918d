// The `checkpoint` section of the run config: how often training checkpoints are written and which are kept.
#pragma once

#include <cstdint>

#include "dla/config/schema.h"

namespace dla::checkpoint {

struct CheckpointOptions {
  int64_t every = 0;       ///< steps between checkpoints; 0: only at the end (and on SIGTERM/SIGINT)
  int64_t keep_last = 3;   ///< the newest this many are kept
  int64_t keep_every = 0;  ///< steps that are multiples of this are kept forever (milestones); 0: none

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("every", every,
            "Steps between checkpoints; 0 writes one only at the end (and on SIGTERM/SIGINT).",
            Bounds::at_least(0));
    v.field("keep_last", keep_last, "How many of the newest checkpoints are kept.", Bounds::at_least(1));
    v.field("keep_every", keep_every, "Checkpoints at multiples of this step are kept forever; 0: none.",
            Bounds::at_least(0));
  }
};

}  // namespace dla::checkpoint
