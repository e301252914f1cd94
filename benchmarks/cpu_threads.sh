#!/usr/bin/env bash
# CPU threads (benchmarks/README.md): img/s of `selfkd bench` (frskd, the demo's model) per process,
# 1 process alone vs 4 at once, under several thread settings. Run on an idle machine.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/selfkd-cpu-threads}; mkdir -p $OUT
B=".venv/bin/selfkd bench --methods frskd --width 16 --image-size 28 --channels 1 --num-classes 10 --batch-size 64 --steps 12 --warmup 3 --rounds 3 --device cpu"
one() { # name, nproc, env...
  local name=$1 n=$2; shift 2
  local pids=()
  for i in $(seq 1 $n); do env "$@" $B --json $OUT/${name}_$i.json > $OUT/${name}_$i.log 2>&1 & pids+=($!); done
  wait "${pids[@]}"
  python3 - "$OUT" "$name" "$n" <<'PY'
import json, sys
out, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates = []
for i in range(1, n + 1):
    rows = {r["method"]: r for r in json.load(open(f"{out}/{name}_{i}.json"))["results"]}
    rates.append(rows["frskd"]["img_per_s"])
print(f"{name:<28} processes {n}  frskd img/s per process: " + ", ".join(f"{r:.0f}" for r in rates) + f"  total {sum(rates):.0f}")
PY
}
nproc; lscpu | grep "Model name" || true
one alone_default 1
one four_default 4
one four_passive 4 OMP_WAIT_POLICY=PASSIVE
one four_threads1 4 OMP_NUM_THREADS=1
one two_threads1 2 OMP_NUM_THREADS=1
one four_threads1_passive 4 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
