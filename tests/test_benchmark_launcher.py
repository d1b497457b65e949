"""`segfungi benchmark --launcher local` (submitit's local executor, the Slurm launcher's path
on one machine) gives the plain run's results: with one job per cell (the default) and a
merge job, also after a cell's job died (its records missing) and the same command runs
again: only that cell's job is submitted, the other cells are read back, not redone; and
with one job (`--jobs one`), also after it is killed and rerun."""

from __future__ import annotations

import json
import signal
import time

import pytest
from test_benchmark import benchmark_settings, lists_folder

from segfungi.cli import main

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
    assert main(argv) == 0  # one job per cell: "voc full" (both sizes), each of the two lists; a merge job
    assert cells(tmp_path / "launched") == plain
    assert len([p for p in (tmp_path / "jobs").iterdir() if p.name.isdigit()]) == 3 + 1
    assert not list((tmp_path / "launched" / "cache").rglob("*.npy"))  # every job's cache removed

    # A cell's job died: its records are missing. The same command submits that cell's job
    # alone (and the merge job); every other record is read back, not redone.
    records = sorted((tmp_path / "launched" / "cells").rglob("*.json"))
    lost = [path for path in records if path.parent.name == "trainaug_2_1"]
    assert len(records) == 8 and len(lost) == 2
    for path in lost:
        path.unlink()
    kept = {path: path.stat().st_mtime_ns for path in records if path not in lost}
    jobs = launch(settings, tmp_path / "launched", Launch("local", str(tmp_path / "jobs3")))
    jobs[-1].result()
    assert len(jobs) == 2 and jobs[0].result()["records"] == 2  # the lost cell's two feature kinds
    assert cells(tmp_path / "launched") == plain
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in kept.items())
    assert all(path.is_file() for path in lost)

    # One job for everything, killed after its first cell: the rerun keeps that cell's record
    # and finishes the rest.
    out, where = tmp_path / "killed", Launch("local", str(tmp_path / "jobs2"), jobs="one")
    # submitit cancels a local job with SIGINT. A test run started in the background (`&`)
    # ignores SIGINT, and so would the job it starts: the job gets Python's default instead.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        [job] = launch(settings, out, where)
    finally:
        signal.signal(signal.SIGINT, ignored)
    deadline = time.time() + 600
    while not list((out / "cells").rglob("*.json")) and time.time() < deadline and not job.done():
        time.sleep(0.5)
    job.cancel()
    while not job.done():
        time.sleep(0.5)
    kept = {path: path.stat().st_mtime_ns for path in (out / "cells").rglob("*.json")}
    assert kept and len(kept) < 8 and not (out / "results.json").exists()
    launch(settings, out, where)[-1].result()
    assert cells(out) == plain
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in kept.items())  # read back, not redone


def test_slurm_needs_a_partition(tmp_path):
    from segfungi.experiments.benchmark import Launch
    from segfungi.experiments.benchmark._launch import executor
    from segfungi.infra.errors import ConfigError

    with pytest.raises(ConfigError, match="--launcher slurm needs --partition NAME"):
        executor(Launch("slurm", str(tmp_path)))


def test_slurm_cell_jobs_are_one_array_and_the_merge_job_depends_on_it(tmp_path, demo_voc_root, monkeypatch):
    """The Slurm wiring without a cluster: one batch (a job array) of the unfinished units'
    jobs, then the merge job submitted with --dependency=afterany on the array."""
    import contextlib

    from segfungi.experiments.benchmark import Launch, _launch, launch

    class Job:
        def __init__(self, job_id, task):
            self.job_id, self.task = job_id, task

    class FakeExecutor:
        def __init__(self):
            self.submitted, self.batches, self.parameters = [], 0, {}

        @contextlib.contextmanager
        def batch(self):
            self.batches += 1
            yield

        def update_parameters(self, **values):
            self.parameters.update(values)

        def submit(self, task):
            job = Job(f"77_{len(self.submitted)}" if task.only else "78", task)
            job.dependency = self.parameters.get("slurm_additional_parameters", {}).get("dependency")
            self.submitted.append(job)
            return job

    fake = FakeExecutor()
    monkeypatch.setattr(_launch, "executor", lambda launch_settings: fake)
    settings = benchmark_settings(demo_voc_root, lists_folder(demo_voc_root, tmp_path / "lists"))
    jobs = launch(settings, tmp_path / "out", Launch("slurm", str(tmp_path / "jobs"), partition="gpu"))
    assert [job.task.only for job in jobs] == [["voc full"], ["voc 1/8 trainaug_2_0"], ["voc 1/8 trainaug_2_1"],
                                              None]
    assert fake.batches == 1 and [job.dependency for job in jobs] == [None, None, None, "afterany:77"]
    assert (tmp_path / "out" / "benchmark.json").is_file()  # the run recorded before any job
