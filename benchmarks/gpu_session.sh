#!/usr/bin/env bash
# One call on the lent GPU: environment, `selfkd bench` (every method eager, then the core methods compiled
# with CUDA graphs), then the GPU correctness tests. Usage (device tool, carry .whl): bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/env.txt"
ALL=$(python3 -m selfkd list methods | paste -sd, -)
python3 -m selfkd bench --methods "$ALL" --compile off --steps 30 --warmup 5 \
  --json "$OUT/bench_eager.json" 2>&1 | tee "$OUT/bench_eager.txt"
python3 -m selfkd bench --methods ${CORE:-ce,dsr,lightskd,frskd,drg} --steps 60 --warmup 12 \
  --json "$OUT/bench_compiled.json" 2>&1 | tee "$OUT/bench_compiled.txt"
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
