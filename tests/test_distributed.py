"""`torchrun -m segfungi build-bank / eval` with 2 CPU processes (gloo) on generated data.

The 2-process bank must equal the single-process one of the `fungi_bank` fixture bit for
bit (same settings and seed), with one manifest and one "bank ready" line; an error on
one rank must end the whole run instead of leaving the other waiting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import SUPPORT_DIR, MemoryBank
from segfungi.inference.evaluation import evaluate

ARRAYS = ["features", "label_ids", "label_weights", "provenance"]


def torchrun(*args, timeout=240):
    env = {**os.environ, "SEGFUNGI_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "segfungi", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def options(root):
    # The same settings as the fungi_bank fixture (tests/conftest.py tiny_settings).
    return ["--config", "demo", "--root", str(root), "--set", "bank.shard_images=4",
            "--set", "bank.batch_size=4", "--quiet"]


@pytest.fixture(scope="module")
def two_process_bank(tmp_path_factory, demo_voc_root):
    out = tmp_path_factory.mktemp("dist") / "fungi"
    done = torchrun("build-bank", *options(demo_voc_root), "--bank-size", "4096", "--features", "fungi",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_two_processes_build_the_single_process_bank(two_process_bank, fungi_bank):
    out, done = two_process_bank
    assert done.stdout.count("bank ready") == 1  # rank 0 prints, rank 1 is silent
    for part in ["", SUPPORT_DIR]:
        two, one = MemoryBank(out / part), MemoryBank(fungi_bank / part)
        assert two.manifest["hash"] == one.manifest["hash"]
        assert [s["checksums"] for s in two.shards] == [s["checksums"] for s in one.shards]
        for name in ARRAYS:
            np.testing.assert_array_equal(two.load(name), one.load(name), err_msg=f"{part}/{name}")
    assert not list(out.rglob(".*.tmp*"))  # no temporaries left by either rank


def test_two_process_eval_sums_the_confusion_matrices(two_process_bank, fungi_bank, demo_voc_root, tmp_path):
    out, _ = two_process_bank
    result_file = tmp_path / "eval.json"
    done = torchrun("eval", "--bank", str(out), "--root", str(demo_voc_root), "--quiet", "--out", str(result_file))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mIoU") == 1
    two = json.loads(result_file.read_text())
    one = evaluate(fungi_bank, tiny_settings(demo_voc_root), progress=False)
    assert two["images"] == one["images"] == 6
    assert abs(two["miou"] - one["miou"]) < 0.01
    assert abs(two["pixel_accuracy"] - one["pixel_accuracy"]) < 0.01


def test_an_error_on_one_rank_ends_the_run(tmp_path, demo_voc_root):
    out = tmp_path / "broken"
    (out / "shards" / "00000").mkdir(parents=True)  # shards but no build record: rank 0 refuses
    done = torchrun("build-bank", *options(demo_voc_root), "--bank-size", "4096", "--features", "fungi",
                    "--out", str(out), timeout=120)
    assert done.returncode != 0
    assert "has shards but no build.json" in done.stderr


def test_two_processes_build_the_single_process_bank_with_independent_support_views(tmp_path, demo_voc_root):
    # The support's own views (fungi.support_views: independent) and the pass over the
    # bank's views that fills the cache are dealt out over the ranks like the others.
    views = ["--set", "fungi.support_views=independent", "--bank-size", "2048", "--features", "fungi"]
    done = torchrun("build-bank", *options(demo_voc_root), *views, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    settings = tiny_settings(demo_voc_root, bank={"size": 2048, "features": "fungi"},
                             fungi={"support_views": "independent"})
    one = build_bank(settings, tmp_path / "one", progress=False)
    for part in ["", SUPPORT_DIR]:
        two_bank, one_bank = MemoryBank(tmp_path / "two" / part), MemoryBank(one / part)
        assert two_bank.hash == one_bank.hash
        assert [s["checksums"] for s in two_bank.shards] == [s["checksums"] for s in one_bank.shards]
    assert not (tmp_path / "two" / "last_block_input").exists()


def test_alone_acts_as_one_process_and_nests():
    """Without a process group every rank is 0 of 1 anyway; inside alone() (nested too) the
    same, and the group's own rank/size stay readable; barrier() does nothing."""
    from segfungi.infra import distributed
    with distributed.alone():
        with distributed.alone():
            assert (distributed.rank(), distributed.world_size(), distributed.active()) == (0, 1, False)
            distributed.barrier()
        assert distributed.is_main() and (distributed.group_rank(), distributed.group_size()) == (0, 1)
