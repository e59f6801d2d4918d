#!/usr/bin/env bash
# Records the GPU numbers of docs/benchmarks.md: the mixers' chunkwise ops at the issue's shapes and
# training steps of the 400M configs, in bf16. Usage: scripts/bench-gpu.sh [BUILD_DIR] > results.jsonl
set -euo pipefail
dla=${1:-build}/dla
"$dla" version >&2
for shape in "8 2048 16 128" "2 8192 16 128"; do
  read -r B T H D <<<"$shape"
  for mixer in gdn mamba2; do
    "$dla" bench layer --mixer "$mixer" -B "$B" -T "$T" -H "$H" -D "$D" --dtype bfloat16 --device cuda --iters 10
  done
done
for model in gdn-400m mamba2-400m; do
  "$dla" bench model --config "configs/models/$model.yaml" --set train.batch_size=8 --set train.seq_len=2048 \
    --set train.precision=bfloat16 --set train.device=cuda --steps 5
done
