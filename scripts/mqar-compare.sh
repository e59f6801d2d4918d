#!/usr/bin/env bash
# Trains the six MQAR configs of configs/mqar/ side by side and prints one JSON line per run with its held-out
# accuracy (docs/memory/mqar.md). Usage: scripts/mqar-compare.sh BUILD_DIR OUT_DIR [--set KEY=VALUE ...]
# Runs go in parallel, each with OMP_NUM_THREADS threads (default 2).
set -euo pipefail
dla=$1/dla
out=$2
shift 2
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
for mixer in gdn mamba2; do
  for policy in single fenwick dla; do
    name=$mixer-$policy
    (
      set +e
      "$dla" train --config "configs/mqar/$name.yaml" --run-dir "$out/$name" "$@" > "$out/$name.log" 2>&1
      status=$?
      echo "{\"run\": \"$name\", \"status\": $status, \"eval\": $(cat "$out/$name/eval.json" 2>/dev/null || echo null)}" \
        > "$out/$name.result"
    ) &
  done
done
wait
cat "$out"/*.result
