#!/usr/bin/env bash
# One device call: cold kernel build, GPU tests, benchmarks. Logs and JSON go to $OUT.
# Usage (on a GPU machine, from the repo root): OUT=/tmp/out bash scripts/gpu_check.sh [bench args...]
set -uo pipefail
OUT=${OUT:-/tmp/xpu_stone_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XPU_STONE_CACHE_DIR=${XPU_STONE_CACHE_DIR:-/tmp/xpu_stone_cache}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
python3 scripts/check_kernels.py --arch native --quiet --json "$OUT/build.json" 2>&1 | tail -3 | tee "$OUT/build.log"
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests} -rf --durations=15 \
  --timeout=${TEST_CASE_TIMEOUT:-120} --junitxml="$OUT/junit.xml" > "$OUT/tests.log" 2>&1
tail -60 "$OUT/tests.log" | cut -c1-400
timeout ${BENCH_TIMEOUT:-200} python3 -m benchmarks.bench_poincare --out "$OUT" "$@" > "$OUT/bench.log" 2>&1
grep -v "^|" "$OUT/bench.log" | tail -5
