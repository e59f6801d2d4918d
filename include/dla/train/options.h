// Training and optimiser options: the `train` and `optim` sections of the run config.
#pragma once

#include <cstdint>

#include "dla/config/schema.h"

namespace dla::train {

enum class LrSchedule { cosine, linear, constant };
enum class Precision { float32, bfloat16 };
enum class DeviceKind { auto_select, cpu, cuda };

}  // namespace dla::train

template <>
struct dla::config::EnumNames<dla::train::LrSchedule> {
  static constexpr std::array<std::string_view, 3> names{"cosine", "linear", "constant"};
};
template <>
struct dla::config::EnumNames<dla::train::Precision> {
  static constexpr std::array<std::string_view, 2> names{"float32", "bfloat16"};
};
template <>
struct dla::config::EnumNames<dla::train::DeviceKind> {
  static constexpr std::array<std::string_view, 3> names{"auto", "cpu", "cuda"};
};

namespace dla::train {

struct OptimOptions {
  double lr = 1e-3;           ///< peak learning rate
  double min_lr_ratio = 0.1;  ///< the schedule decays to lr · min_lr_ratio
  LrSchedule schedule = LrSchedule::cosine;
  int64_t warmup_steps = 100;  ///< linear warm-up from 0
  double weight_decay = 0.1;   ///< AdamW; matrices only
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  ///< max global gradient norm; 0 disables clipping

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("lr", lr, "Peak learning rate.", Bounds::positive());
    v.field("min_lr_ratio", min_lr_ratio, "The schedule ends at lr · min_lr_ratio.", Bounds::between(0, 1));
    v.field("schedule", schedule, "Decay after warm-up.");
    v.field("warmup_steps", warmup_steps, "Steps of linear warm-up from 0 to lr.", Bounds::at_least(0));
    v.field(
        "weight_decay", weight_decay,
        "AdamW decoupled weight decay, applied to matrices only (not to norms, biases, A_log, dt_bias, D).",
        Bounds::at_least(0));
    v.field("beta1", beta1, "AdamW β1.", Bounds::between(0, 1));
    v.field("beta2", beta2, "AdamW β2.", Bounds::between(0, 1));
    v.field("eps", eps, "AdamW ε.", Bounds::positive());
    v.field("grad_clip", grad_clip, "Clip the global gradient norm to this value; 0 disables clipping.",
            Bounds::at_least(0));
  }
};

struct TrainOptions {
  int64_t steps = 1000;          ///< optimiser steps
  int64_t batch_size = 32;       ///< sequences per optimiser step (global, over all ranks and micro-batches)
  int64_t grad_accum_steps = 1;  ///< micro-batches per step
  int64_t eval_every = 0;        ///< steps between evaluations; 0: only at the end
  int64_t seq_len = 64;          ///< tokens per sequence
  int64_t log_every = 10;        ///< steps between progress lines and metrics rows
  DeviceKind device = DeviceKind::auto_select;
  Precision precision = Precision::float32;
  bool activation_checkpointing = false;  ///< recompute each block's activations in the backward pass
  bool cuda_graphs = false;               ///< replay each step's forward and backward pass as a CUDA graph

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("steps", steps, "Optimiser steps to run.", Bounds::at_least(1));
    v.field("batch_size", batch_size, "Sequences per optimiser step, over all ranks and micro-batches.",
            Bounds::at_least(1));
    v.field("grad_accum_steps", grad_accum_steps, "Micro-batches per step; must divide batch_size.",
            Bounds::at_least(1));
    v.field("seq_len", seq_len, "Tokens per training sequence.", Bounds::at_least(2));
    v.field(
        "eval_every", eval_every,
        "Steps between held-out evaluations (validation loss for data.source = tokens); 0: only at the end.",
        Bounds::at_least(0));
    v.field("log_every", log_every, "Steps between progress lines and rows of metrics.jsonl.",
            Bounds::at_least(1));
    v.field("device", device, "auto (CUDA when available), cpu or cuda.");
    v.field("precision", precision, "float32, or bfloat16 autocast with float32 master weights (CUDA only).");
    v.field("activation_checkpointing", activation_checkpointing,
            "Keep only each block's input in the forward pass and recompute the block in the backward pass: "
            "less memory for one more forward.");
    v.field(
        "cuda_graphs", cuda_graphs,
        "Capture a step's forward and backward pass as a CUDA graph after three eager steps and replay it "
        "at every later step: one launch per step instead of one per kernel. CUDA only, one process, "
        "train.grad_accum_steps = 1.");
  }
};

}  // namespace dla::train
