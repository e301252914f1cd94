#!/usr/bin/env bash
# One call on the lent GPU: environment, `selfkd bench` (the core methods compiled with CUDA graphs, every
# method eager, the input pipeline and inference alone), then the GPU-only tests.
# Device tool: run `bash benchmarks/gpu_session.sh` with carry [".whl"] (pydantic wheels for the image's
# Python; see the device README). Results land in $OUT (or ./bench-out).
set -uo pipefail
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/env.txt"
python3 -m selfkd bench --methods ${CORE:-ce,dsr,drg,lightskd,frskd} --steps 100 --warmup 15 \
  --json "$OUT/bench_compiled.json" 2>&1 | tee "$OUT/bench_compiled.txt"
python3 -m selfkd bench --methods "$(python3 -m selfkd list methods | paste -sd, -)" --compile off --steps 30 --warmup 5 \
  --json "$OUT/bench_eager.json" 2>&1 | tee "$OUT/bench_eager.txt"
python3 -m selfkd bench --what data --steps 200 --warmup 20 --json "$OUT/bench_data.json" 2>&1 | tee "$OUT/bench_data.txt"
python3 -m selfkd bench --what eval --batch-size 500 --steps 40 --warmup 5 --json "$OUT/bench_eval.json" 2>&1 | tee "$OUT/bench_eval.txt"
timeout ${TEST_TIMEOUT:-400} python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
