#!/usr/bin/env bash
# The GPU check (docs/performance.md, "GPU check"): one table, under 8 minutes on one CUDA GPU.
#
#   make gpu-wheels            # where there is network: MONAI and nibabel wheels into .gpu-wheels/
#   bash scripts/gpu_check.sh  # on the GPU machine, from a copy of the checkout with .gpu-wheels/ in it
#
# Needs a Python with a CUDA build of torch (PYTHON, default python3; torch is never installed here).
# What it lacks of MONAI and nibabel is installed from .gpu-wheels/ without network
# (pip --no-index) into a folder of its own (GPU_SITE), put on PYTHONPATH with the checkout.
# Arguments go to scripts/gpu_check.py (--cpu-dry-run: tiny sizes on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.gpu-wheels}
SITE=${GPU_SITE:-${TMPDIR:-/tmp}/volseg-gpu-site}
started=$SECONDS

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "FAIL: $PYTHON cannot import torch; set PYTHON to a Python with a CUDA build of torch"
    exit 1
fi
if ! "$PYTHON" -c "import monai, nibabel" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "FAIL: MONAI or nibabel is missing and $WHEELS/ holds no wheels; run 'make gpu-wheels' where there is network"
        exit 1
    fi
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --find-links "$WHEELS" \
        --target "$SITE" monai nibabel || { echo "FAIL: pip could not install the wheels in $WHEELS/"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "dependencies ready in $((SECONDS - started)) s"
# gpu_check.py keeps its rows within 430 s; this is the last guard of the 8 minutes.
timeout --kill-after=10 $((470 - (SECONDS - started))) "$PYTHON" scripts/gpu_check.py "$@"
