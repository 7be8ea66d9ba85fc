#!/usr/bin/env bash
# Issue 12's GPU checks in one device call (bench/gpu_checks.py), outputs in $OUT.
# The device image has torch and transformers but not PyAV, which `import spool` needs: carry
# its wheel in .whl (how: docs/benchmarks.md, section "GPU: ..."). BUDGET: seconds of checks.
set -uo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT="${OUT:-/tmp/gpu_checks}"
mkdir -p "$OUT"
nvidia-smi -L || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 bench/gpu_checks.py --json "$OUT/gpu_checks.json" --out "$OUT/gpu_checks.md" \
    --budget-s "${BUDGET:-450}" "$@" 2>&1 | tee "$OUT/gpu_checks.log"
