#!/usr/bin/env bash
# The one runner for GPU checks and benchmarks: runs the named suites in order, each logged to
# $OUT/<suite>.log (its tail printed), then one summary line per suite; exits 1 if any failed.
#
# Usage (from anywhere; on a GPU machine):
#   OUT=/path bash benchmarks/run.sh [SUITE ...]   # no SUITE: device build tests poincare
#   OUT=/path bash benchmarks/run.sh all           # every suite, in the order below
#   bash benchmarks/run.sh --help                  # this text
#
# Suites:
#   device      nvidia-smi (to $OUT/device.txt) + python -m xpu_stone: device report, kernel build, self-check, demo
#   build       scripts/check_kernels.py --arch native (sm_80 sm_90 when nvidia-smi fails) --json $OUT/build.json
#   tests       pytest $TESTS on the GPU, -rfE --durations=15, $OUT/junit.xml (--timeout per test if pytest-timeout is
#               installed, -n TEST_WORKERS if pytest-xdist is), summarised by scripts/gpu_test_report.py as
#               $OUT/gpu-tests-<GPU>-<date>.json
#   poincare    benchmarks.bench_poincare, short (D 64 and 1024, fp32): Poincaré-ball ops vs torch eager, torch.compile, geoopt
#   models      benchmarks.bench_models --quick: Lorentz and Klein ops and the conversions
#   poincare_full, models_full
#               the whole row-wise table (issue 15): --full, every op x fp32/bf16/fp16 x D each against
#               torch eager, torch.compile and geoopt, the compiled graphs built first in parallel processes
#               (results get the suffix -table; 0.8 GB a forward). H200, 2026-12-01, at 0.25 GB: 137 s of
#               precompile for the 210 Poincare cells, then about 3.5 s a cell, so neither table fits one
#               10-minute call: the file is written after each cell, and
#               ARGS_poincare_full='--resume <that file>' continues it
#   pairwise    benchmarks.bench_pairwise: cdist and knn vs cuBLAS alone and torch.compile
#   linear      benchmarks.bench_linear: hyperbolic linear layers vs torch.compile of the references
#   optim       benchmarks.bench_optim: fused Riemannian optimizer steps vs geoopt and torch Adam
#   embeddings  benchmarks.bench_embeddings --max-seconds 200: mammal Poincaré embeddings vs geoopt
#   userloop    benchmarks.bench_user_loop: a user's plain training loop (mammals) with xpu_stone, geoopt, a
#               Euclidean floor, torch.compile and a captured step (~2-3 min on an H200)
#   session     benchmarks.bench_session: inference-session latency and profiler overhead
#   hostpath    benchmarks.bench_host_path: where one small call's host time goes, stage by stage, and cProfile
#   digits      xpu_stone.examples.digits_mlp --device cuda: the digits example on the GPU
#   disk        xpu_stone.examples.poincare_embeddings --dim 2 --plot: 2-D Poincaré disk PNG in $OUT/disk
#   properties  the Hypothesis property tests on CUDA with the `device` profile (10x CI's examples); counts in
#               $OUT/hypothesis-examples.json
#   distributed benchmarks/bench_distributed.py: sharded embeddings of a generated 10M-node tree on every GPU
# Benchmarks write their JSON and markdown to $OUT; copy those worth keeping to benchmarks/results/
# (logs stay out of git: see .gitignore).
#
# Environment:
#   OUT                  output folder (default /tmp/xpu_stone_out)
#   TESTS                test paths for `tests` (default tests)
#   PYTHON               interpreter (default python3)
#   XPU_STONE_CACHE_DIR  kernel cache (default /tmp/xpu_stone_cache); PYTHONPATH gets the repo root
#   TIMEOUT_<suite>      seconds before that suite is killed (defaults: SUITE_TIMEOUT in this file)
#   ARGS_<suite>         extra arguments appended to that suite's command (later options win), e.g.
#                        ARGS_poincare='--dims 16 64 256 1024 4096 --dtypes float32 bfloat16 --compare-dims 16 256 4096'
#                        with TIMEOUT_poincare=600: the full sweep of benchmarks/results/poincare-*.json (~5 min, H200)
#   TEST_CASE_TIMEOUT    per-test timeout of `tests` when pytest-timeout is installed (default 120)
#   TEST_WORKERS         pytest-xdist processes of `tests` when pytest-xdist is installed (default: CPUs - 2, at
#                        most 14; 1 runs the tests in one process)
#   TEST_REPORT_SUFFIX   suffix of the `tests` result file (gpu-tests-<GPU>-<date>-<suffix>.json), e.g. for a
#                        suite run in parts, TESTS naming each part's files
#   TAIL                 lines of each log printed after the suite (default 15; tests: 40)
set -uo pipefail

SUITES=(device build tests poincare models poincare_full models_full pairwise linear optim embeddings userloop session
  hostpath digits disk properties distributed)
DEFAULT_SUITES=(device build tests poincare)
declare -A SUITE_TIMEOUT=(
  [device]=600 [build]=600 [tests]=420 [poincare]=240 [models]=240 [poincare_full]=590 [models_full]=590 [pairwise]=180
  [linear]=180 [optim]=180 [embeddings]=300 [userloop]=300 [session]=120 [hostpath]=120 [digits]=120 [disk]=180
  [properties]=540 [distributed]=420
)

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }

# ---- arguments: validate every suite before running any
requested=()
for arg in "$@"; do
  case $arg in
    -h | --help) usage; exit 0 ;;
    all) requested+=("${SUITES[@]}") ;;
    *)
      if [[ -z ${SUITE_TIMEOUT[$arg]+x} ]]; then
        echo "run.sh: unknown suite '$arg'; suites: ${SUITES[*]} all (see: bash benchmarks/run.sh --help)" >&2
        exit 2
      fi
      requested+=("$arg") ;;
  esac
done
((${#requested[@]})) || requested=("${DEFAULT_SUITES[@]}")
declare -A seen=()
run_list=()
for s in "${requested[@]}"; do [[ -n ${seen[$s]+x} ]] || { seen[$s]=1; run_list+=("$s"); }; done

# ---- environment
OUT=${OUT:-/tmp/xpu_stone_out}
mkdir -p "$OUT" || { echo "run.sh: cannot create OUT=$OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XPU_STONE_CACHE_DIR=${XPU_STONE_CACHE_DIR:-/tmp/xpu_stone_cache}
PY=${PYTHON:-python3}
TESTS=${TESTS:-tests}
TAIL=${TAIL:-15}

have_gpu() { nvidia-smi -L > /dev/null 2>&1; }

# run CMD...: the suite's main command, under its timeout, with ARGS_<suite> appended.
run() {
  echo "+ $* ${EXTRA[*]}"
  timeout -k 30 "$LIMIT" "$@" "${EXTRA[@]}"
}

bench_module() {  # bench_module NAME [ARGS...]: python -m benchmarks.bench_NAME --out $OUT ARGS...
  local name=$1; shift
  if [[ ! -f benchmarks/bench_$name.py ]]; then
    echo "benchmarks/bench_$name.py does not exist"
    return 2
  fi
  run "$PY" -m "benchmarks.bench_$name" --out "$OUT" "$@"
}

suite_device() {
  # nvidia-smi is informative only; the suite's status is that of python -m xpu_stone.
  if ! command -v nvidia-smi > /dev/null; then
    echo "nvidia-smi: not installed (no NVIDIA driver?)" | tee "$OUT/device.txt"
  elif ! nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
    > "$OUT/device.txt" 2>&1; then
    echo "nvidia-smi failed:"
    cat "$OUT/device.txt"
  else
    cat "$OUT/device.txt"
  fi
  run "$PY" -m xpu_stone
}

suite_build() {
  local arch=(native)
  have_gpu || { arch=(sm_80 sm_90); echo "nvidia-smi failed: building for ${arch[*]} instead of native"; }
  run "$PY" scripts/check_kernels.py --arch "${arch[@]}" --quiet --json "$OUT/build.json"
}

suite_tests() {
  local per_test=()
  if "$PY" -c "import pytest_timeout" 2> /dev/null; then
    per_test=(--timeout="${TEST_CASE_TIMEOUT:-120}")
  else
    echo "pytest-timeout not installed: no per-test timeout"
  fi
  # pytest-xdist, when installed: TEST_WORKERS processes share the GPU (default: the CPU count less two, at
  # most 14; on a fresh H200 the whole suite then takes about 190 s after the build, about 430 s on one process)
  local workers=()
  if "$PY" -c "import xdist" 2> /dev/null; then
    local n=$(($(nproc) - 2))
    ((n > 14)) && n=14
    ((n < 1)) && n=1
    workers=(-n "${TEST_WORKERS:-$n}")
  else
    echo "pytest-xdist not installed: one test process"
  fi
  local paths
  read -ra paths <<< "$TESTS"
  # A module that fails to import fails the suite but does not stop the other modules.
  run "$PY" -m pytest -q -p no:cacheprovider "${paths[@]}" -rfE --durations=15 "${per_test[@]}" "${workers[@]}" \
    --continue-on-collection-errors --junitxml="$OUT/junit.xml"
  local rc=$?
  # the result file the README quotes: gpu-tests-<GPU>-<date>.json (copy it to benchmarks/results/)
  [[ -f $OUT/junit.xml ]] && "$PY" scripts/gpu_test_report.py "$OUT/junit.xml" --out "$OUT" \
    ${TEST_REPORT_SUFFIX:+--suffix "$TEST_REPORT_SUFFIX"}
  return "$rc"
}

suite_poincare() { bench_module poincare --dims 64 1024 --dtypes float32 --compare-dims 1024; }
suite_models() { bench_module models --quick; }
suite_poincare_full() { bench_module poincare --full --suffix table; }
suite_models_full() { bench_module models --full --suffix table; }
suite_pairwise() { bench_module pairwise; }
suite_linear() { bench_module linear; }
suite_optim() { bench_module optim; }
suite_embeddings() { bench_module embeddings --max-seconds 200; }
suite_userloop() { bench_module user_loop; }
suite_session() { bench_module session; }
suite_hostpath() { bench_module host_path; }
suite_digits() { run "$PY" -m xpu_stone.examples.digits_mlp --device cuda --no-progress; }
suite_disk() {
  run "$PY" -m xpu_stone.examples.poincare_embeddings --dim 2 --plot --quiet --device cuda --out "$OUT/disk"
}
suite_properties() {
  run env XPU_STONE_HYPOTHESIS_PROFILE=device XPU_STONE_TEST_REPORT_DIR="$OUT" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_properties_*.py -rfE
}
suite_distributed() {
  local gpus
  gpus=$(nvidia-smi -L 2> /dev/null | wc -l)
  run "$PY" benchmarks/bench_distributed.py --nodes 10000000 --world-size "$((gpus > 0 ? gpus : 1))" --out "$OUT"
}

# ---- run
echo "run.sh: ${run_list[*]} -> $OUT ($(git rev-parse --short HEAD 2> /dev/null || echo 'no git'), $(date -Is))"
summary=()
failed=()
for suite in "${run_list[@]}"; do
  log=$OUT/$suite.log
  limit_var=TIMEOUT_$suite
  LIMIT=${!limit_var:-${SUITE_TIMEOUT[$suite]}}
  args_var=ARGS_$suite
  read -ra EXTRA <<< "${!args_var:-}"
  echo "=== $suite ($(date +%T), limit ${LIMIT}s, log $log)"
  start=$SECONDS
  "suite_$suite" > "$log" 2>&1
  rc=$?
  took=$((SECONDS - start))
  lines=$TAIL
  [[ $suite == tests ]] && lines=$((TAIL + 25))
  grep -v '^|' "$log" | tail -n "$lines" | cut -c1-300
  case $rc in
    0) status=ok ;;
    124 | 137) status=TIMEOUT ;;
    *) status=FAILED ;;
  esac
  ((rc == 0)) || failed+=("$suite")
  summary+=("$(printf '%-10s %-7s exit %-3s %5ss  %s' "$suite" "$status" "$rc" "$took" "$log")")
done

echo "=== summary ($OUT)"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" | tee -a "$OUT/summary.txt"
  exit 1
fi
echo "all ${#run_list[@]} suites passed" | tee -a "$OUT/summary.txt"
