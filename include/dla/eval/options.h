// The `eval` section of the run config: an evaluation suite run during training.
#pragma once

#include <cstdint>
#include <string>

#include "dla/config/schema.h"

namespace dla::eval {

struct TrainingEvalOptions {
  std::string suite;      ///< a suite file (configs/eval/*.yaml); empty: none
  int64_t every = 0;      ///< steps between runs (and once at the end); 0: only at the end
  int64_t limit = 0;      ///< > 0: at most this many documents or examples per task
  std::string data_root;  ///< where the suite's data files are; empty: the suite's data_root

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field(
        "suite", suite,
        "Evaluation suite (YAML, docs/eval.md) run during training, sharded over the ranks; empty: none.");
    v.field("every", every, "Steps between suite runs; the suite also runs at the end. 0: only at the end.",
            Bounds::at_least(0));
    v.field("limit", limit, "At most this many documents or examples per task; 0: all.", Bounds::at_least(0));
    v.field("data_root", data_root, "Folder of the suite's data files; empty: the suite's own data_root.");
  }
};

}  // namespace dla::eval
