#!/usr/bin/env bash
# The cost of the per-step stop vote under torchrun (benchmarks/README.md): one epoch on CPU, 2 processes (gloo),
# alternately with the vote and with each process reading only its own stop flag. Run on an idle machine.
set -eu
SELFKD=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/selfkd-stop-vote}; mkdir -p "$WORK"; cd "$WORK"
cat > vote.py <<'PY'
import sys
import selfkd.engine.distributed as d
from selfkd.cli import main
if sys.argv[1] == "off":
    d.StopVote.start = lambda self: None  # result() then reads this process's own flag
sys.exit(main(["train", "-c", sys.argv[2], "--run-dir", sys.argv[3]]))
PY
cat > run.yaml <<'YAML'
method: {name: ce}
model: {name: cifar_resnet18, width: 8}
data: {dataset: synthetic, options: {num_classes: 10, train_size: 8192, test_size: 64, image_size: 32}, batch_size: 64, eval_batch_size: 64}
optim: {lr: 0.05}
schedule: {name: constant}
train: {epochs: 1, device: cpu, progress: false, log_every: 1000}
YAML
for m in on off on off; do
  rm -rf "run_$m"
  OMP_NUM_THREADS=1 "$SELFKD/.venv/bin/torchrun" --standalone --nproc_per_node 2 vote.py $m run.yaml "run_$m" >/dev/null 2>&1
  python3 -c "import json; print('$m', round(json.load(open('run_$m/summary.json'))['img_per_s']))"
done
