#!/usr/bin/env bash
# Records the memory-policy numbers of docs/benchmarks.md: every mixer under single, fenwick and dla memory
# at the issue's shapes, then training steps of the DLA and Fenwick 400M configs, in bf16.
# Usage: scripts/bench-memory-gpu.sh [BUILD_DIR] > results.jsonl
set -euo pipefail
dla=${1:-build}/dla
"$dla" version >&2
for shape in "8 2048 16 128" "2 8192 16 128" "1 16384 16 128"; do
  read -r B T H D <<<"$shape"
  for mixer in gdn mamba2; do
    for memory in single fenwick dla; do
      "$dla" bench layer --mixer "$mixer" --memory "$memory" -B "$B" -T "$T" -H "$H" -D "$D" --dtype bfloat16 \
        --device cuda --warmup 1 --iters 3
    done
  done
done
for model in gdn-dla-400m gdn-fenwick-400m mamba2-dla-400m; do
  "$dla" bench model --config "configs/models/$model.yaml" --set train.batch_size=8 --set train.seq_len=2048 \
    --set train.precision=bfloat16 --set train.device=cuda --steps 3
done
