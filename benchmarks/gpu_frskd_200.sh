#!/usr/bin/env bash
# Target "a whole 200-epoch CIFAR-100 FRSKD ResNet-18 run on one H100 in <= 15 minutes, evaluation included"
# (performance.md), timed with `selfkd train` itself on data of CIFAR-100's shape: the GPU machine has no datasets
# and no network, and speed does not depend on pixel values (synthetic: 50,000 train / 10,000 test, 100 classes).
# One device call may run 10 minutes, so each call trains for at most $BUDGET seconds, stops cleanly on SIGTERM
# (checkpoint written), and adds its wall time, start-up and compilation included, to $RUN/wall_s.txt; the next
# call resumes. The run folder lives on the GPU machine, so the calls must follow while it is still held.
# Device tool: `bash benchmarks/gpu_frskd_200.sh` with carry [".whl"], repeated until it prints "done".
set -uo pipefail
RUN=${RUN:-.bench-run/frskd200}; BUDGET=${BUDGET:-540}
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-.bench-run/inductor}
mkdir -p "$RUN"
start=$(date +%s.%N)
# shellcheck disable=SC2086  # $SELFKD_ARGS: extra CLI words (a CPU rehearsal shrinks the run with them)
timeout -s TERM -k 60 "$BUDGET" python3 -m selfkd train -c configs/cifar100/frskd_resnet18.yaml --resume auto \
  --run-dir "$RUN" --dataset synthetic --set data.options.num_classes=100 --set data.options.train_size=50000 \
  --set data.options.test_size=10000 --set data.options.image_size=32 --set train.progress=false ${SELFKD_ARGS:-} \
  2>&1 | tail -n 25
rc=${PIPESTATUS[0]}
python3 - "$start" "$RUN" "$rc" <<'PY'
import json, pathlib, sys, time
start, run, rc = float(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
with open(run / "wall_s.txt", "a") as f:
    f.write(f"{time.time() - start:.1f}\n")
calls = [float(x) for x in (run / "wall_s.txt").read_text().split()]
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
epochs = max((r["epoch"] for r in rows), default=0)
train_s = sum(r.get("time/epoch_s", 0) for r in rows)
state = "done" if (run / "summary.json").exists() else f"stopped (exit {rc}); call again to resume"
print(f"{state}: {epochs} epochs, wall {sum(calls):.0f} s over {len(calls)} call(s) {calls}, of which training "
      f"epochs {train_s:.0f} s")
PY
if [ -n "${OUT:-}" ]; then cp "$RUN"/wall_s.txt "$RUN"/metrics.jsonl "$RUN"/summary.json "$OUT"/ 2>/dev/null; fi
exit 0
