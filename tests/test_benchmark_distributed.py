"""`torchrun --nproc-per-node 2 -m segfungi benchmark` (gloo on CPUs) gives the results of one
process: the encodings of the evaluated images (once, for every cell), the views' encodings
and FUNGI passes are split over the ranks (shards and image batches), the few-shot cells are dealt out whole
(one list per rank), and every bank hash, shard checksum and mIoU equals the one-process
run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_benchmark import lists_folder

from segfungi.cli import main


def test_two_ranks_give_the_one_process_results(tmp_path, demo_voc_root):
    lists = lists_folder(demo_voc_root, tmp_path / "lists")
    args = ["benchmark", "--config", "demo", "--datasets", "voc", "--root", f"voc={demo_voc_root}",
            "--sizes", "2048", "--fractions", "1/8", "--subsets", str(lists), "--set", "data.image_size=256",
            "--set", "bank.shard_images=4", "--set", "bank.batch_size=4", "--set", "index.exact_below=1500",
            ]
    assert main([*args, "--quiet", "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "SEGFUNGI_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "segfungi", *args, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # The second list was built and evaluated by rank 1 alone; rank 0 read its records.
    dealt = [line for line in done.stderr.splitlines() if "evaluations]" in line and "(rank 1)" in line]
    assert len(dealt) == 2 and all("1/8 trainaug_2_1" in line for line in dealt), done.stderr[-3000:]
    # The evaluated images were encoded once, for the full-data and the dealt few-shot cells
    # alike: rank 0 (the one that shows progress) encoded its share in one pass.
    encodes = [line for line in done.stderr.splitlines() if line.startswith("encode voc val (batches): 0/")]
    assert len(encodes) == 1, done.stderr[-3000:]

    def cells(out):
        records = json.loads((out / "results.json").read_text())
        records = records["records"] if isinstance(records, dict) else records
        return {(r["features"], r["bank_size"], r["trial"]): (r["bank_hash"], r["miou_fraction"], r["per_class_iou_fraction"]) for r in records}

    one, two = cells(tmp_path / "one"), cells(tmp_path / "two")
    assert len(one) == 2 * 3 and one == two
    from segfungi.bank import MemoryBank

    for bank in sorted((tmp_path / "one").rglob("manifest.json")):
        other = tmp_path / "two" / bank.parent.relative_to(tmp_path / "one")
        assert [s["checksums"] for s in MemoryBank(bank.parent).shards] == \
               [s["checksums"] for s in MemoryBank(other).shards], bank.parent
