#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md, in parts that each fit one 10-minute device call:
#   core   `selfkd bench` of the core methods compiled (CUDA graphs), with per-method profiles
#   all    every method eager, ce and frskd compiled at batch 512, the input pipeline and inference alone
#   tests  the GPU-only tests (compiled vs eager losses)
# Device tool: `bash benchmarks/gpu_session.sh core` (then all, tests) with carry [".whl"] (pydantic wheels for
# the image's Python; see the device README). Results land in $OUT (or ./bench-out). Compiled kernels are cached
# in .bench-run/inductor, which later calls reuse while the machine is still held.
set -uo pipefail
PART=${1:-core}; OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-.bench-run/inductor}
bench() { local name=$1; shift; python3 -m selfkd bench "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/env.txt"
case $PART in
  core)  # perf_hints: torch.compile says here if it skips CUDA graphs for a method, and why
    TORCH_LOGS=${TORCH_LOGS:-perf_hints} bench bench_compiled --methods "${CORE:-ce,dsr,drg,lightskd,frskd}" --steps 100 --warmup 15 --profile "$OUT/profile" ;;
  all)
    bench bench_eager --methods "$(python3 -m selfkd list methods | paste -sd, -)" --compile off --steps 30 --warmup 5
    bench bench_compiled_b512 --methods frskd --batch-size 512 --steps 40 --warmup 10
    bench bench_data --what data --steps 200 --warmup 20
    bench bench_eval --what eval --batch-size 500 --steps 40 --warmup 5 ;;
  tests)
    timeout "${TEST_TIMEOUT:-540}" python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt" ;;
  *) echo "unknown part '$PART': use core, all or tests" >&2; exit 2 ;;
esac
