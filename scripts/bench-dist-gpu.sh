#!/usr/bin/env bash
# Data-parallel scaling on one node: training-step tokens/s of gdn-400m (8 × 2048 per GPU) and of the
# DLA-GDN 400M config (8 × 2048 per GPU) on 1, 2, ... GPUs, in bf16 over NCCL. The batch
# per GPU is fixed, so perfect scaling keeps tokens_per_s_per_rank constant.
# Usage: scripts/bench-dist-gpu.sh [BUILD_DIR] [GPU counts...] > results.jsonl
set -euo pipefail
dla=${1:-build}/dla
shift || true
counts=("${@:-1 2}")
read -r -a counts <<<"${counts[*]}"
"$dla" version >&2
for model_batch in "gdn-400m 8" "gdn-dla-400m 8"; do
  read -r model per_gpu <<<"$model_batch"
  for n in "${counts[@]}"; do
    "$dla" launch --nproc-per-node "$n" -- bench model --config "configs/models/$model.yaml" \
      --set train.batch_size=$((per_gpu * n)) --set train.seq_len=2048 --set train.precision=bfloat16 \
      --set train.device=cuda --warmup 3 --steps 10
  done
done
