#!/usr/bin/env bash
# One device call: every CUDA test, forward_long's hidden state on the device vs in RAM
# (bench/long_video_gpu.py, given LONG_ARGS if set, e.g. --resumable), attention at T = 256/512 for k = 4, and with T_SUITE=seconds the
# whole test suite with a GPU present (defaults such as --device auto take it; tests written for
# the CPU's fp32 may then differ by bf16 round-off). A step whose T_* is 0 is skipped. Outputs
# in $OUT; logs stay short.
set -uo pipefail
OUT="${OUT:-/tmp/gpu_long_checks}"
source bench/device_env.sh
step() { echo "== $1 ($(date +%T))"; }
export PYTEST_FAILURES_LOG="$OUT/pytest_failures.log" PYTHONPATH="$PYTHONPATH:$PWD/bench"
LIVE=(-p pytest_live_failures)  # each failure's traceback as it happens (bench/)
if [ -n "${RERUN:-}" ]; then  # RERUN="node ids": those first, one process, tracebacks in full
    step "rerun: $RERUN"
    timeout "${T_RERUN:-120}" python3 -m pytest -q -rfE --tb=short -p no:cacheprovider \
        "${LIVE[@]}" $RERUN > "$OUT/pytest_rerun.log" 2>&1
    echo "rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_rerun.log" | tail -n 15
fi
if [ "${T_TESTS:-180}" -gt 0 ]; then
step "CUDA tests"
timeout "${T_TESTS:-180}" python3 -m pytest -q -rfEs --tb=short -p no:cacheprovider \
    "${LIVE[@]}" --continue-on-collection-errors -k cuda tests > "$OUT/pytest_cuda.log" 2>&1
echo "rc=$?"; tail -n 15 "$OUT/pytest_cuda.log"
fi
if [ "${T_LONG:-150}" -gt 0 ]; then
step "forward_long: hidden state on the device vs in RAM"
timeout "${T_LONG:-150}" python3 bench/long_video_gpu.py ${LONG_ARGS:---frames 2000 8000 --pooling 1 4} \
    --json "$OUT/long_video_gpu.json" 2>&1 | tail -n 12
fi
if [ "${T_ATTN:-90}" -gt 0 ]; then
step "attention at T = 256, 512 (k = 4)"
timeout "${T_ATTN:-90}" python3 bench/gpu_checks.py --parts backends --backends blocked dense \
    --backend-ts 256 512 --backend-pooling 4 --backend-batch 1 8 --backend-dtypes bf16 \
    --budget-s 80 --json "$OUT/backends_t256.json" > "$OUT/backends_t256.log" 2>&1
echo "rc=$?"; grep -F "[gpu_checks] {" "$OUT/backends_t256.log" | cut -c1-200 | tail -n 16
fi
if [ "${T_SUITE:-0}" -gt 0 ]; then
    step "the whole test suite with a GPU present"
    # pytest-xdist where installed (PYTHONHASHSEED: every worker collects alike). -v names each
    # result as it comes, which a summary cut off by the time limit would lose; pytest-timeout
    # (T_EACH seconds) turns a hung test into a failure. Two threads a worker, as in CI: 14
    # workers of 16 threads each left the run too slow to finish.
    XDIST=(); python3 -c "import xdist" 2>/dev/null && XDIST=(-n 14 -p no:benchmark)
    python3 -c "import pytest_timeout" 2>/dev/null && XDIST+=(--timeout "${T_EACH:-120}")
    OMP_NUM_THREADS=2 PYTHONHASHSEED=0 timeout "$T_SUITE" python3 -m pytest -v -rfE \
        --tb=short -p no:cacheprovider "${LIVE[@]}" "${XDIST[@]}" --junitxml "$OUT/pytest_all.xml" \
        --continue-on-collection-errors tests > "$OUT/pytest_all.log" 2>&1
    echo "rc=$?"; grep -E "(FAILED|ERROR) tests" "$OUT/pytest_all.log" | sort -u | head -n 40
    tail -n 3 "$OUT/pytest_all.log"
fi
step done
