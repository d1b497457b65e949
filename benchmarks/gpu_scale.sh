#!/usr/bin/env bash
# Every stage of the field's table at >= 1 M-patch scale on one GPU, at most 6 minutes:
# benchmarks/gpu_scale.py on the GPU by default (`bash benchmarks/gpu_scale.sh --device cuda:1` for another one).
# A machine without the project's packages gets them from wheels in .whl/ (albumentations
# and what it needs), installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import albumentations" 2>/dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
exec python3 benchmarks/gpu_scale.py "$@"
