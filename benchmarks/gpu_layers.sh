#!/usr/bin/env bash
# Issue 3, items 4-7 on one GPU: kernel build, GPU tests, the digits example on CUDA,
# the pairwise and linear benchmarks. Logs, JUnit and benchmark JSON/markdown go to $OUT.
# Usage (repo root): OUT=/tmp/out bash benchmarks/gpu_layers.sh
set -uo pipefail
OUT=${OUT:-/tmp/xpu_stone_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XPU_STONE_CACHE_DIR=${XPU_STONE_CACHE_DIR:-/tmp/xpu_stone_cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 scripts/check_kernels.py --arch native --ops pairwise_cdist hyperbolic_linear --quiet \
  --json "$OUT/build_layers.json" 2>&1 | tail -3 | tee "$OUT/build_layers.log"
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider tests/test_pairwise_cuda.py \
  tests/test_linear_cuda.py -rf --durations=10 \
  --junitxml="$OUT/junit_layers.xml" > "$OUT/tests_layers.log" 2>&1
tail -40 "$OUT/tests_layers.log" | cut -c1-400
timeout 60 python3 -m xpu_stone.examples.digits_mlp --device cuda --no-progress 2>&1 | tail -2 | tee "$OUT/digits_cuda.log"
timeout ${BENCH_TIMEOUT:-120} python3 -m benchmarks.bench_pairwise --out "$OUT" > "$OUT/bench_pairwise.log" 2>&1
grep -v "^|" "$OUT/bench_pairwise.log" | tail -8
timeout ${BENCH_TIMEOUT:-120} python3 -m benchmarks.bench_linear --out "$OUT" > "$OUT/bench_linear.log" 2>&1
grep -v "^|" "$OUT/bench_linear.log" | tail -6
