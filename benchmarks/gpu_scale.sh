#!/usr/bin/env bash
# Every stage of the field's table at >= 1 M-patch scale on one GPU, at most 6 minutes:
# benchmarks/gpu_scale.py on the GPU by default (`bash benchmarks/gpu_scale.sh --device cuda:1` for another one).
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
exec python3 benchmarks/gpu_scale.py "$@"
