#!/usr/bin/env bash
# Issue 12's GPU checks in one device call (bench/gpu_checks.py), outputs in $OUT.
# The device image has torch and transformers but not PyAV, which `import spool` needs: carry
# its wheel in .whl (how: docs/benchmarks.md, section "GPU: ..."). BUDGET: seconds of checks.
set -uo pipefail
OUT="${OUT:-/tmp/gpu_checks}"
source bench/device_env.sh
python3 bench/gpu_checks.py --json "$OUT/gpu_checks.json" --out "$OUT/gpu_checks.md" \
    --budget-s "${BUDGET:-450}" "$@" 2>&1 | tee "$OUT/gpu_checks.log"
