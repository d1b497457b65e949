"""benchmarks/gpu_check.py's CPU twin: the same checks as on a GPU, on a tiny model, so the
script a GPU session runs is known to work before the GPU time is spent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_its_checks_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "check FUNGI features cpu vs cpu, float32: max relative difference 0.00e+00 (< 1e-3): ok" in out
    assert "check torchrun build, 2 process(es), gloo" in out and "identical to the one-process bank: ok" in out
    assert "embeddings bank on cpu" in out and "fungi bank on cpu" in out and "FUNGI ÷ embeddings" in out
    assert out.rstrip().endswith("gpu_check: all checks ok")
