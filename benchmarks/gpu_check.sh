#!/usr/bin/env bash
# segfungi's CUDA path in one short run (under 5 minutes on one GPU): benchmarks/gpu_check.py,
# on the GPU by default (`bash benchmarks/gpu_check.sh --device cuda:1` for another one).
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
exec python3 benchmarks/gpu_check.py "$@"
