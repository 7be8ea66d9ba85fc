# Sourced by the device scripts (gpu_checks.sh, gpu_long_checks.sh) with OUT set: the wheels
# carried in .whl (PyAV, which `import spool` needs and the device image lacks; pytest-xdist),
# the repository on PYTHONPATH, $OUT made, and what the machine runs printed.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
nvidia-smi -L || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
