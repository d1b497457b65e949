"""Faults while building a bank: nothing finished is lost, nothing half-written is used.

Real processes where the fault is about processes: `python -m segfungi build-bank` is
SIGKILLed after its first shard folder appears, while a shard's files are being
written, and while the ScaNN index is being saved; each is resumed with --resume and
must give exactly the arrays of an uninterrupted build. A second real process is
refused while the first holds the build lock. Full disks and unwritable folders are
simulated in-process (monkeypatched `shutil.disk_usage` / write calls; a path under a
regular file; chmod only when not root).

The pausing builds run `segfungi.cli` through a small wrapper script written by the
test (tests/…/pause.py): it wraps one library function so that the process waits,
at a known point of a write, for the test to kill it. Nothing in the library knows
about it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi import api
from segfungi.api import build_bank
from segfungi.bank import MANIFEST, MemoryBank, estimate_bank_bytes, make_plan
from segfungi.bank import _build as bank_module
from segfungi.cli import main
from segfungi.components import bank_spec, index_settings
from segfungi.infra import storage
from segfungi.infra.errors import BankError

ARRAYS = ["features", "label_ids", "label_weights", "provenance", "embedding_norm"]
# 8 training images at 256² (16×16 patches), one per shard: 8 shards of 128 patches.
SETTINGS = {"bank": {"size": 1024, "features": "embeddings", "shard_images": 1, "batch_size": 1},
            "index": {"kind": "scann"}, "data": {"image_size": 256}}
TEMPORARY = re.compile(r"^\..+\.tmp(-\d+)?$")

PAUSE_SCRIPT = r'''
"""Run `segfungi ARGS…`, but stop forever at one point of a write (the test kills us)."""
import sys, time, runpy
from pathlib import Path

ready, point = Path(sys.argv[1]), sys.argv[2]
sys.argv = ["segfungi", *sys.argv[3:]]


def pause(where):
    ready.write_text(str(where))
    while True:
        time.sleep(1)


if point == "shard":
    import segfungi.infra.storage as storage
    real_checksum = storage.file_checksum

    def checksum_then_pause(path):
        # Called after each array file is written into a shard's temporary folder:
        # pause after the first file of the second shard (one shard already done).
        digest = real_checksum(path)
        if ".tmp-" in path.parent.name and path.parent.name.startswith(".00001"):
            pause(path)
        return digest

    storage.file_checksum = checksum_then_pause
elif point == "index":
    import segfungi.index._files as index_files
    real_write_meta = index_files.write_meta

    def pause_before_meta(folder, meta):
        # ScaNN's files are written, the index's own metadata not yet.
        pause(folder)

    index_files.write_meta = pause_before_meta
runpy.run_module("segfungi", run_name="__main__")
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from segfungi.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("faults") / "data", layout="voc", n_images=10, seed=1, n_val=2)


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    """The uninterrupted build every interrupted one must equal (8 shards, ScaNN index)."""
    return build_bank(tiny_settings(root, **SETTINGS), tmp_path_factory.mktemp("ref") / "bank", progress=False)


def cli_args(root, out) -> list[str]:
    return ["build-bank", "--config", "demo", "--root", str(root), "--random-init", "--out", str(out), "--quiet",
            "--features", "embeddings", "--bank-size", "1024", "--set", "bank.shard_images=1",
            "--set", "bank.batch_size=1", "--set", "index.kind=scann", "--set", "data.image_size=256"]


def start(args: list[str], wrapper: Path | None = None, ready: Path | None = None, point: str = "") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    prefix = [sys.executable, str(wrapper), str(ready), point] if wrapper else [sys.executable, "-m", "segfungi"]
    return subprocess.Popen(prefix + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"build ended (rc {process.returncode}) before {what}:\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def resume(root, out, capsys) -> None:
    code = main(cli_args(root, out) + ["--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err


def assert_same_bank(path: Path, reference: Path) -> None:
    got, want = MemoryBank(path), MemoryBank(reference)
    assert got.hash == want.hash
    assert [s["checksums"] for s in got.shards] == [s["checksums"] for s in want.shards]
    for name in ARRAYS:
        np.testing.assert_array_equal(got.load(name), want.load(name), err_msg=name)
    queries = want.load_features()[::7]
    settings = tiny_settings("unused", **SETTINGS)
    index = index_settings(settings)
    for a, b in zip(got.index(index).search(queries, 5), want.index(index).search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    leftovers = [p for d in (path, path / "shards") for p in d.iterdir() if TEMPORARY.match(p.name)]
    assert leftovers == [] and not (path / "build.json").exists() and not (path / "build.lock").exists()


# ------------------------------------------------------------------ real kills
def test_sigkill_after_first_shard_then_resume_equals_uninterrupted(root, reference, tmp_path, capsys):
    out = tmp_path / "bank"
    process = start(cli_args(root, out))
    wait_for(lambda: (out / "shards" / "00000").is_dir(), process, "the first shard folder appeared")
    kill(process)
    assert not (out / MANIFEST).exists() and (out / "build.json").exists()
    done = sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith("."))
    assert 1 <= len(done) < 8
    for shard in done:  # what was finished is complete and intact
        assert storage.verify_folder(out / "shards" / shard) == []

    # The interrupted build is described, refused for use, and listed by verify.
    assert main(["bank", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "incomplete (resumable" in info and f"{len(done)} of 8 shards done" in info
    assert main(["bank", "verify", str(out)]) == 1
    assert "incomplete build" in capsys.readouterr().out
    with pytest.raises(BankError, match="incomplete"):
        MemoryBank(out)
    assert main(cli_args(root, out)) == 2  # without --resume: refused, nothing touched
    assert "--resume" in capsys.readouterr().err

    resume(root, out, capsys)
    assert_same_bank(out, reference)


def test_sigkill_while_a_shard_is_written_and_a_second_build_is_refused(root, reference, tmp_path, capsys):
    out, ready = tmp_path / "bank", tmp_path / "ready"
    wrapper = tmp_path / "pause.py"
    wrapper.write_text(PAUSE_SCRIPT)
    process = start(cli_args(root, out), wrapper, ready, "shard")
    wait_for(ready.exists, process, "the pause inside the second shard's write")
    # Mid-write: the shard exists only as a temporary folder holding one array so far.
    partial = Path(ready.read_text()).parent
    assert TEMPORARY.match(partial.name) and partial.parent == out / "shards"
    assert not (partial / "meta.json").exists() and not (out / "shards" / "00001").exists()

    # A second real build into the same folder is refused while the first one runs.
    second = subprocess.run([sys.executable, "-m", "segfungi", *cli_args(root, out), "--resume"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert second.returncode == 2
    assert "another build is running" in second.stderr and str(process.pid) in second.stderr
    assert "Traceback" not in second.stderr

    kill(process)
    assert partial.exists()  # the killed writer's temporary is still there …
    resume(root, out, capsys)  # … the kernel released its lock; the resume clears it up
    assert not partial.exists()
    assert_same_bank(out, reference)


def test_sigkill_while_the_index_is_saved(root, reference, tmp_path, capsys):
    out, ready = tmp_path / "bank", tmp_path / "ready"
    wrapper = tmp_path / "pause.py"
    wrapper.write_text(PAUSE_SCRIPT)
    process = start(cli_args(root, out), wrapper, ready, "index")
    wait_for(ready.exists, process, "the pause inside the index save")
    assert Path(ready.read_text()).name.startswith(".index.tmp-")
    kill(process)
    assert not (out / "index").exists() and not (out / MANIFEST).exists()
    assert len(list((out / "shards").glob("0*"))) == 8  # every shard was kept
    resume(root, out, capsys)
    assert_same_bank(out, reference)


# ------------------------------------------------------------- disk and folder
def test_estimate_covers_the_real_bank(root, reference):
    settings = tiny_settings(root, **SETTINGS)
    plan = make_plan(bank_spec(settings), 8, 256)
    estimate = estimate_bank_bytes(plan, 192, "embeddings", settings["bank"]["label_topk"], index_settings(settings))
    shards = storage.folder_size(reference / "shards")
    index = storage.folder_size(reference / "index")
    assert shards <= estimate["shards"] <= 1.2 * shards + 64 * 1024
    assert index <= estimate["index"] <= 1.2 * index + 2 * 1024 * 1024


def test_too_little_free_space_stops_before_any_work(root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bank"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    monkeypatch.setattr(bank_module, "EmbeddingsWriter", lambda *a, **k: pytest.fail("work started"))
    code = main(cli_args(root, out))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert re.search(r"not enough free disk space: embeddings bank of 1024 patches × 192 dims needs about "
                     r"[\d.]+ MB, 1\.0 MB free", err), err
    assert not (out / "build.json").exists() and not (out / "shards").exists()


def test_disk_full_during_a_shard_keeps_finished_shards_and_resumes(root, reference, tmp_path, monkeypatch):
    out = tmp_path / "bank"
    real_save, calls = np.save, {"n": 0}

    def save_until_disk_full(file, array, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # inside the second shard (5 arrays per shard)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, array, **kwargs)

    monkeypatch.setattr(storage.np, "save", save_until_disk_full)
    with pytest.raises(BankError, match=r"shards/00001: cannot write \(No space left on device\); "
                                        r"free disk space, then rerun with --resume"):
        build_bank(tiny_settings(root, **SETTINGS), out, progress=False)
    monkeypatch.undo()
    assert [p.name for p in (out / "shards").iterdir()] == ["00000"]  # no temporary left behind
    build_bank(tiny_settings(root, **SETTINGS), out, resume=True, progress=False)
    assert_same_bank(out, reference)


def test_output_under_a_regular_file_is_refused_up_front(root, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    code = main(cli_args(root, blocker / "bank"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{blocker / 'bank'}: output folder is not writable ({blocker} is a file, not a folder)" in err


def test_unwritable_output_folder_is_refused_up_front(root, tmp_path, monkeypatch):
    out = tmp_path / "bank"
    real_open = open

    def read_only_open(file, mode="r", *args, **kwargs):
        if "w" in mode and str(out) in str(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "open", read_only_open, raising=False)
    monkeypatch.setattr(api, "open_train_dataset", lambda s: pytest.fail("work started"))
    with pytest.raises(BankError, match=rf"{re.escape(str(out))}: output folder is not writable \(Permission denied\)"):
        build_bank(tiny_settings(root, **SETTINGS), out, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; covered by the monkeypatched test")
def test_read_only_folder_is_refused_up_front(root, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(BankError, match="not writable"):
            build_bank(tiny_settings(root, **SETTINGS), parent / "bank", progress=False)
    finally:
        parent.chmod(0o700)


def test_damaged_finished_shard_is_rebuilt_on_resume(root, reference, tmp_path, capsys):
    """A finished shard that was damaged after it was written (disk error) is not kept."""
    out = tmp_path / "bank"
    shutil.copytree(reference, out)
    record = {"hash": MemoryBank(reference).manifest["hash"], "identity": MemoryBank(reference).manifest["identity"],
              "settings": MemoryBank(reference).settings}
    (out / MANIFEST).unlink()
    shutil.rmtree(out / "index")
    (out / "build.json").write_text(json.dumps(record))
    features = out / "shards" / "00002" / "features.npy"
    data = bytearray(features.read_bytes())
    data[-5] ^= 0x10
    features.write_bytes(bytes(data))
    build_bank(tiny_settings(root, **SETTINGS), out, resume=True, progress=False)
    assert "shards/00002 is damaged" in capsys.readouterr().err
    assert_same_bank(out, reference)
