#!/usr/bin/env bash
# One device call: every CUDA test, forward_long's hidden state on the device vs in RAM
# (bench/long_video_gpu.py), attention at T = 256/512 for k = 4, and with T_SUITE=seconds the
# whole test suite with a GPU present (defaults such as --device auto take it; tests written for
# the CPU's fp32 may then differ by bf16 round-off). Outputs in $OUT; logs stay short.
set -uo pipefail
OUT="${OUT:-/tmp/gpu_long_checks}"
source bench/device_env.sh
step() { echo "== $1 ($(date +%T))"; }
step "CUDA tests"
timeout "${T_TESTS:-180}" python3 -m pytest -q -rfEs --tb=short -p no:cacheprovider \
    --continue-on-collection-errors -k cuda tests > "$OUT/pytest_cuda.log" 2>&1
echo "rc=$?"; tail -n 15 "$OUT/pytest_cuda.log"
step "forward_long: hidden state on the device vs in RAM"
timeout "${T_LONG:-150}" python3 bench/long_video_gpu.py --frames 2000 8000 --pooling 1 4 \
    --json "$OUT/long_video_gpu.json" 2>&1 | tail -n 12
step "attention at T = 256, 512 (k = 4)"
timeout "${T_ATTN:-90}" python3 bench/gpu_checks.py --parts backends --backends blocked dense \
    --backend-ts 256 512 --backend-pooling 4 --backend-batch 1 8 --backend-dtypes bf16 \
    --budget-s 80 --json "$OUT/backends_t256.json" > "$OUT/backends_t256.log" 2>&1
echo "rc=$?"; grep -F "[gpu_checks] {" "$OUT/backends_t256.log" | cut -c1-200 | tail -n 16
if [ "${T_SUITE:-0}" -gt 0 ]; then
    step "the whole test suite with a GPU present"
    # pytest-xdist when carried in .whl (PYTHONHASHSEED: every worker collects alike); the
    # junit file names each failure as it happens, which a cut-off summary would lose.
    XDIST=(); python3 -c "import xdist" 2>/dev/null && XDIST=(-n 14 -p no:benchmark)
    PYTHONHASHSEED=0 timeout "$T_SUITE" python3 -m pytest -q -rfE --tb=short \
        -p no:cacheprovider "${XDIST[@]}" --junitxml "$OUT/pytest_all.xml" \
        --continue-on-collection-errors tests > "$OUT/pytest_all.log" 2>&1
    echo "rc=$?"; tail -n 25 "$OUT/pytest_all.log"
fi
step done
