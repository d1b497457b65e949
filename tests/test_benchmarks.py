"""The benchmark scripts run end to end on tiny inputs and their built-in cross-checks hold.

Only correctness lines are asserted (the fast path agrees with the reference it is
timed against, recall is sane); timings never go into tests."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_features_fast_paths_agree_with_the_reference():
    out = run_benchmark("bench_features.py", "--backbone", "vit_tiny_patch16_224", "--img-size", "64",
                        "--images", "2", "--batch-size", "1", "--repeats", "1", "--threads", "1",
                        "--kept", "4", "--dtypes", "bfloat16")
    projection = re.search(r"reference vs streamed core .*: max relative difference (\S+)", out)
    gradients = re.search(r"reference vs our gradient pass, .*: max relative difference (\S+)", out)
    assert float(projection.group(1)) < 1e-5
    assert float(gradients.group(1)) < 1e-5
    recall = re.search(r"recall@30 of the float32 features' neighbours .*: (\S+)", out)
    assert 0.5 < float(recall.group(1)) <= 1.0
    # the lookup and GEMM kernels multiply by the same matrix: float rounding apart
    kernels = re.search(r"lookup vs gemm features .*\(mean / 99% / max\) \S+ / \S+ / (\S+);.*neighbours (\S+)", out)
    assert kernels, out
    assert float(kernels.group(1)) < 1e-5 and float(kernels.group(2)) >= 0.99


def test_bench_index_recall_grows_with_reordering(tmp_path):
    out = run_benchmark("bench_index.py", "--sizes", "4000", "--dim", "32", "--queries", "64",
                        "--reorders", "30", "200", "--rounds", "1", "--workdir", str(tmp_path))
    recalls = [float(m) for m in re.findall(r"scann float32 l\d+r\d+ .* (\d\.\d{4}) +\d+\.\d+$", out, re.MULTILINE)]
    assert len(recalls) == 2, out
    # the 200 candidates contain the 30, and reordering is exact: recall cannot drop
    assert 0.3 < recalls[0] <= recalls[1] <= 1.0
    assert "× exact" in out


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("bench_*.py")))
def test_every_benchmark_documents_its_command_line(script):
    out = run_benchmark(script, "--help")
    assert "usage:" in out


def test_bench_bank_memory_phases_see_the_whole_bank(tmp_path):
    out = run_benchmark("bench_bank_memory.py", "--patches", "30000", "--dim", "32", "--reorder-dtype", "int8",
                        "--threads", "1", "--workdir", str(tmp_path))
    assert re.search(r"int8\s+index .*index_bytes_on_disk \d+", out), out
    assert re.search(r"int8\s+support .*negatives_s_per_image", out), out
    assert "rows 30000, label_rows 30000" in out, out


def test_bench_index_batched_support_queries_find_the_same_neighbours(tmp_path):
    # The worker exits non-zero if a batched search finds other ids than one call.
    out = run_benchmark("bench_index.py", "--sizes", "3000", "--dim", "32", "--queries", "120", "--k", "2",
                        "--leaves", "8", "--query-batch", "0", "50", "--rounds", "1", "--workdir", str(tmp_path))
    rows = re.findall(r"scann float32 (l8r120\S*) .* (\d\.\d{4}) +\d+\.\d+$", out, re.MULTILINE)
    assert [name for name, _ in rows] == ["l8r120", "l8r120b50"], out
    assert rows[0][1] == rows[1][1]


def test_bench_benchmark_cells_equal_separate_runs(tmp_path):
    out = run_benchmark("bench_benchmark.py", "--train", "12", "--val", "4", "--image-size", "64",
                        "--per-view", "2", "8", "16", "--workdir", str(tmp_path))
    assert "every cell's mIoU and bank hash identical: True" in out, out
    assert re.search(r"shared / independent time: \d\.\d\d× wall, \d\.\d\d× CPU", out), out
