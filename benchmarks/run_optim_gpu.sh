#!/usr/bin/env bash
# GPU checks of issue 6 (optimizers, geoopt drop-in, Poincaré embeddings) in one go, ~4 min on an H200.
#   OUT=/path bash benchmarks/run_optim_gpu.sh            # everything
#   QUICK=1 OUT=/path bash benchmarks/run_optim_gpu.sh    # ~2 min: fewer epochs / tensors
# Logs, JSON, markdown, embeddings and the disk PNG go to $OUT.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python}
if [ "${QUICK:-0}" = 1 ]; then EPOCHS=100; TENSORS=100; else EPOCHS=300; TENSORS=200; fi
step() { echo "=== $1 ($(date +%T))"; }
step "GPU tests"
timeout 300 $PY -m pytest -q -rs tests/test_optim_cuda.py tests/test_compat.py tests/test_optim.py 2>&1 | tail -40 | tee "$OUT/optim-gpu-tests.log"
step "optimizer step benchmark"
timeout 180 $PY benchmarks/bench_optim.py --tensors $TENSORS --out "$OUT" 2>&1 | tee "$OUT/bench_optim.log"
step "embedding benchmark"
timeout 300 $PY benchmarks/bench_embeddings.py --epochs $EPOCHS --max-seconds 200 --out "$OUT" 2>&1 | tee "$OUT/bench_embeddings.log"
step "2-D disk plot"
timeout 120 $PY -m xpu_stone.examples.poincare_embeddings --dim 2 --epochs $EPOCHS --plot --quiet --out "$OUT/disk" 2>&1 | tee "$OUT/disk.log"
step "done"
