"""A FUNGI bank whose support index is a ScaNN index is reproducible across processes.

Before ScaNN's builds were made deterministic, two processes built the same support
embeddings but differently numbered ScaNN leaves, so negatives and FUNGI features
differed (issue 16.1). `index.exact_below` forces ScaNN at the demo's small sizes.
Each build runs in its own process: within one process ScaNN was always repeatable.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from segfungi.api import build_bank
from segfungi.bank._writers import FungiWriter, ShardWriter
from segfungi.config import load_config
root, out, mode = sys.argv[2:5]
settings = load_config("demo", [
    {"data": {"root": root}},
    {"bank": {"size": 2048, "features": "fungi", "shard_images": 2, "batch_size": 2}},
    {"index": {"exact_below": 500}},
])
if mode == "crash":
    real_write, calls = ShardWriter.write, {"n": 0}
    def crash_after_one(self, shard):
        if isinstance(self, FungiWriter) and calls["n"] == 1:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += isinstance(self, FungiWriter)
        real_write(self, shard)
    ShardWriter.write = crash_after_one
    try:
        build_bank(settings, out, progress=False)
    except KeyboardInterrupt:
        sys.exit(0)
    sys.exit("the simulated kill did not happen")
build_bank(settings, out, resume=(mode == "resume"), progress=False)
"""


def run(root, out, mode):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT), str(root), str(out), mode],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]


def content_files(bank):
    """Every array and index file (manifests and shard meta hold build timings)."""
    return sorted(
        p.relative_to(bank) for p in bank.rglob("*")
        if p.is_file() and (p.suffix in (".npy", ".pb", ".pbtxt") or p.name == "segfungi_index.json")
    )


@pytest.mark.slow
def test_fungi_bank_with_scann_support_index_is_bit_identical_when_resumed(tmp_path):
    from segfungi.data.demo import write_demo_dataset

    root = write_demo_dataset(tmp_path / "data", layout="voc", n_images=8, seed=0, n_val=2)
    run(root, tmp_path / "straight", "straight")
    run(root, tmp_path / "resumed", "crash")
    run(root, tmp_path / "resumed", "resume")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    files = content_files(straight)
    assert Path("support/index/serialized_partitioner.pb") in files  # ScaNN support index
    assert Path("index/serialized_partitioner.pb") in files
    assert content_files(resumed) == files
    for name in files:
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), f"{name} differs"
    features = np.load(next(straight.glob("shards/*/features.npy")))
    assert features.shape[1] == 2 * 192 and np.isfinite(features).all()
