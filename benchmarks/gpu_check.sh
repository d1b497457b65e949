#!/usr/bin/env bash
# segfungi's CUDA path in one short run (under 5 minutes on one GPU): benchmarks/gpu_check.py,
# on the GPU by default (`bash benchmarks/gpu_check.sh --device cuda:1` for another one).
# A machine without the project's packages gets them from wheels in .whl/ (albumentations
# and what it needs), installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import albumentations" 2>/dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
exec python3 benchmarks/gpu_check.py "$@"
