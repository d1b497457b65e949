"""benchmarks/gpu_scale.py's CPU twin (every stage at tiny sizes, so the script a GPU session
runs is known to work before the GPU time is spent), and benchmarks/bench_faiss.py's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_gpu_scale_runs_every_stage_on_the_cpu():
    out = run("gpu_scale.py", "--device", "cpu", "--tiny")
    for projection in ("dense", "structured"):
        for dtype in ("float32", "bfloat16"):
            assert re.search(rf"FUNGI {projection} +projection {dtype} *: +[\d.]+ ms/image, FUNGI ÷ embeddings "
                             r"[\d.]+", out), out
    # Device-exact search is exact: recall 1 and the float32 ids in every query.
    found = re.findall(r"search device-exact float16 ([\d,]+) × 32: .* recall@30 ([\d.]+), same ids as float32 in "
                       r"([\d.]+)% of queries", out)
    assert [(rows, recall, same) for rows, recall, same in found] == [("3,000", "1.0000", "100.0"),
                                                                       ("12,000", "1.0000", "100.0")]
    assert re.search(r"search scann 3,000 × 32 on \d+ CPU threads: build [\d.]+ s, [\d,]+ queries/s, recall@30 "
                     r"[\d.]+; device-exact ÷ ScaNN", out)
    assert re.search(r"transfer 2 images, .* [\d.]+ ms/image", out)
    assert "plan   ade20k 1/8 training_8_42" in out and "plan   stages   encode" in out
    assert out.rstrip().splitlines()[-1].startswith("gpu_scale: done in")


def test_bench_faiss_compares_torch_and_faiss():
    out = run("bench_faiss.py", "--tiny")
    assert re.search(r"torch DeviceExactIndex float16 +build .* recall@30 1\.0000, exact id sets 100\.0%", out), out
    assert re.search(r"torch ExactIndex float32 +build .* recall@30 1\.0000", out), out
    pytest.importorskip("faiss")
    assert re.search(r"faiss IndexFlatIP float32 +build .* recall@30 1\.0000", out), out


@pytest.mark.parametrize("script", ["gpu_scale.sh", "gpu_check.sh"])
def test_the_shell_wrappers_reach_their_scripts_from_any_folder(script, tmp_path):
    """What a GPU session runs first: the wrapper (sourcing gpu_env.sh) finds the checkout
    from another working folder and hands its arguments on."""
    done = subprocess.run(["bash", str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {script.replace('.sh', '.py')}")
