"""`segfungi benchmark --launcher local` (submitit's local executor, the Slurm launcher's path
on one machine) gives the plain run's results, also after its job is killed and the same
command runs again: the finished cells are read back, not redone."""

from __future__ import annotations

import json
import time

import pytest

from segfungi.cli import main

from test_benchmark import benchmark_settings, lists_folder

pytest.importorskip("submitit")


def cells(out):
    records = json.loads((out / "results.json").read_text())["records"]
    return {(r["features"], r["bank_size"], r["trial"]): (r["bank_hash"], r["miou_fraction"]) for r in records}


def test_a_local_job_and_a_killed_one_rerun_give_the_plain_results(tmp_path, demo_voc_root):
    from segfungi.experiments.benchmark import Launch, launch, run_benchmark

    lists = lists_folder(demo_voc_root, tmp_path / "lists")
    settings = benchmark_settings(demo_voc_root, lists)
    run_benchmark(settings, tmp_path / "plain", progress=False)
    plain = cells(tmp_path / "plain")
    assert len(plain) == 8

    argv = ["benchmark", "--config", "demo", "--datasets", "voc", "--root", f"voc={demo_voc_root}",
            "--sizes", "1024", "2048", "--fractions", "1/8", "--subsets", str(lists),
            "--set", "data.image_size=256", "--set", "bank.shard_images=4", "--set", "bank.batch_size=4",
            "--set", "index.exact_below=1500", "--out", str(tmp_path / "launched"),
            "--launcher", "local", "--launcher-folder", str(tmp_path / "jobs"), "--quiet"]
    assert main(argv) == 0
    assert cells(tmp_path / "launched") == plain

    # Killed after its first cell: the rerun keeps that cell's record and finishes the rest.
    out, where = tmp_path / "killed", Launch("local", str(tmp_path / "jobs2"))
    job = launch(settings, out, where)
    deadline = time.time() + 600
    while not list((out / "cells").rglob("*.json")) and time.time() < deadline and not job.done():
        time.sleep(0.5)
    job.cancel()
    while not job.done():
        time.sleep(0.5)
    kept = {path: path.stat().st_mtime_ns for path in (out / "cells").rglob("*.json")}
    assert kept and len(kept) < 8 and not (out / "results.json").exists()
    launch(settings, out, where).result()
    assert cells(out) == plain
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in kept.items())  # read back, not redone


def test_slurm_needs_a_partition(tmp_path):
    from segfungi.experiments.benchmark import Launch
    from segfungi.experiments.benchmark._launch import executor
    from segfungi.infra.errors import ConfigError

    with pytest.raises(ConfigError, match="--launcher slurm needs --partition NAME"):
        executor(Launch("slurm", str(tmp_path)))
