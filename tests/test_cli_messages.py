"""What the command line says and leaves behind when things go wrong (issue 16, items 8-12):
Ctrl-C during build-bank, failed starts, files that are not checkpoints, --bank paths that
are not banks, flags and help of every sub-command, build-time keys eval ignores, --verbose.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import bad_inputs
from segfungi.bank import MemoryBank, differences
from segfungi.cli import build_parser, main
from segfungi.commands._options import warn_ignored_build_keys
from segfungi.infra import logging_setup
from segfungi.infra.errors import BankError, CheckpointError
from segfungi.infra.storage import ensure_writable_dir

REPO = Path(__file__).resolve().parents[1]
# 6 training images at 64² (4×4 patches), one augmented image per shard: 6 shards, seconds to build.
TINY = ["--config", "demo", "--bank-size", "48", "--quiet",
        "--set", "data.image_size=64", "--set", "bank.shard_images=1", "--set", "bank.batch_size=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from segfungi.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("msg") / "data", layout="voc", n_images=8, seed=0, n_val=2)


def build_args(root, out, *extra, features="embeddings"):
    return ["build-bank", *TINY, "--root", str(root), "--features", features, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def bank(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "emb"
    assert main(build_args(root, out)) == 0
    return out


# --------------------------------------------------------------- 8: Ctrl-C
# Runs the CLI in a subprocess whose shard writer pauses after each shard, so a real
# SIGINT reliably lands in the middle of the build.
_SLOW_CLI = """
import sys, time
from segfungi.bank import _writers as shards
from segfungi.cli import main
write = shards.ShardWriter.write
def slow_write(self, shard):
    write(self, shard)
    time.sleep(0.4)
shards.ShardWriter.write = slow_write
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a subprocess: its imports take 10-25 s on a busy machine
def test_sigint_during_build_bank_says_what_was_kept_and_how_to_resume(root, tmp_path, capsys):
    out = tmp_path / "bank"
    argv = build_args(root, out)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not (out / "shards" / "00001").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the build never reached its second shard"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    done = len(list((out / "shards").iterdir()))
    assert 2 <= done < 6
    resume = f"segfungi {shlex.join(argv)} --resume"
    assert lines[0] == (f"segfungi build-bank: interrupted; kept {done} of 6 shards of the embeddings bank "
                        f"in {out}; resume with: {resume}")
    # The command it prints resumes the build, and the result equals an uninterrupted build.
    assert main(shlex.split(resume)[1:]) == 0
    assert main(build_args(root, tmp_path / "fresh")) == 0
    resumed, fresh = MemoryBank(out), MemoryBank(tmp_path / "fresh")
    assert resumed.manifest["hash"] == fresh.manifest["hash"]
    assert np.array_equal(resumed.load_features(), fresh.load_features())


def test_interrupted_fungi_build_names_both_banks(root, tmp_path, monkeypatch, capsys):
    from segfungi.bank import _writers as shards

    write = shards.ShardWriter.write

    def interrupt_fungi(self, shard):
        if self.outs[0].name != "support" and shard == 1:
            raise KeyboardInterrupt
        write(self, shard)

    monkeypatch.setattr(shards.ShardWriter, "write", interrupt_fungi)
    out = tmp_path / "fungi"
    argv = build_args(root, out, features="fungi")
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (f"interrupted; kept the complete support (embeddings) bank and 1 of 6 shards of the fungi bank "
            f"in {out}; resume with: segfungi {shlex.join(argv)} --resume") in err


def test_interrupt_before_the_build_started_leaves_nothing(root, tmp_path, monkeypatch, capsys):
    from segfungi import api as front_door

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(front_door, "make_extractor", interrupt)  # Ctrl-C while the model loads
    out = tmp_path / "new" / "bank"
    assert main(build_args(root, out)) == 130
    err = capsys.readouterr().err
    assert f"stopped before the build started; nothing was kept in {out}" in err
    assert not (tmp_path / "new").exists()


def test_ctrl_c_in_other_commands_is_one_line(bank, monkeypatch, capsys):
    from segfungi.inference import evaluation as evaluate
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate", interrupt)
    assert main(["eval", "--bank", str(bank), "--quiet"]) == 130
    assert capsys.readouterr().err == "segfungi eval: interrupted\n"


# ------------------------------------------------------ 9: failed starts
def test_failed_start_leaves_no_folder(root, tmp_path, capsys):
    out = tmp_path / "runs" / "bank"
    assert main(build_args(root, out, "--weights", str(tmp_path / "missing.pth"))) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    # A folder that was there before is never removed, even an empty one.
    out.mkdir(parents=True)
    assert main(build_args(root, out, "--weights", str(tmp_path / "missing.pth"))) == 2
    assert out.is_dir()


def test_failed_sweep_leaves_no_bank_folder(root, tmp_path, capsys):
    code = main(["sweep", "--config", "demo", "--root", str(root), "--weights", str(tmp_path / "missing.pth"),
                 "--sizes", "16", "32", "--out", str(tmp_path / "sweep"), "--quiet"])
    assert code == 2 and "checkpoint file not found" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_a_started_build_that_fails_is_kept_for_resume(root, tmp_path, monkeypatch, capsys):
    from segfungi.bank import _writers as shards
    from segfungi.infra.errors import DatasetError

    write = shards.ShardWriter.write

    def fail_third(self, shard):
        if shard == 2:
            raise DatasetError("image 3: broken (test)")
        write(self, shard)

    monkeypatch.setattr(shards.ShardWriter, "write", fail_third)
    out = tmp_path / "bank"
    assert main(build_args(root, out)) == 2
    assert (out / "build.json").exists() and len(list((out / "shards").iterdir())) == 2


def test_ensure_writable_dir_creates_nothing(tmp_path):
    ensure_writable_dir(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(BankError, match="is a file, not a folder"):
        ensure_writable_dir(tmp_path / "file" / "bank")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------- 10: files that are not checkpoints
def _weights_error(path: Path) -> str:
    from segfungi.families import load_backbone

    with pytest.raises(CheckpointError) as info:
        load_backbone("vit_tiny_patch16_224", weights=path, img_size=64)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "weights_only=False" not in message and "\x1b" not in message and "trust" not in message
    return message


@pytest.mark.parametrize("content, what", [
    (b"hello world\n", "a text file (first line: 'hello world')"),
    (b"# notes\nsome text\n", "a text file (first line: '# notes')"),
    (b"", "an empty file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    (b"\x93NUMPY\x01\x00" + bytes(64), "a NumPy .npy array"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "a Git LFS pointer"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
    (bytes(range(1, 32)) * 4, "an unknown binary format (first bytes 01 02 03"),
], ids=["text", "comment", "empty", "png", "npy", "lfs", "html", "binary"])
def test_non_checkpoint_file_says_what_it_is(tmp_path, content, what):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    message = _weights_error(path)
    assert f"{path}: not a checkpoint: it is {what}" in message
    assert "pickled" not in message


def test_pickled_module_names_the_object_without_colour_codes(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    message = _weights_error(path)
    assert "refused: the checkpoint contains pickled Python objects" in message
    assert "torch.nn.modules.linear.Linear" in message
    assert "torch.save(model.state_dict(), path)" in message


def test_plain_pickle_is_refused_unread(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"state_dict": bad_inputs.evil_pickle_payload(marker)}))
    assert "refused: a plain Python pickle, not a torch checkpoint" in _weights_error(path)
    path.write_bytes(pickle.dumps({"cls_token": np.zeros(3)}))  # harmless, but still a pickle
    assert "refused: a plain Python pickle" in _weights_error(path)
    assert not marker.exists()


def test_zip_that_is_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "weights.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not weights")
    assert "a zip archive but not a readable torch checkpoint" in _weights_error(path)


def test_real_checkpoints_still_load(tmp_path):
    import timm

    from segfungi.families import load_backbone

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64)
    for legacy in (False, True):
        path = tmp_path / f"ok-{legacy}.pth"
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
        loaded = load_backbone("vit_tiny_patch16_224", weights=path, img_size=64)
        assert torch.equal(loaded.model.cls_token, model.cls_token)


def test_text_weights_through_the_cli(root, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("download the weights from the web page\n")
    assert main(build_args(root, tmp_path / "out", "--weights", str(notes))) == 2
    err = capsys.readouterr().err
    assert err == (f"segfungi build-bank: error: {notes}: not a checkpoint: it is a text file (first line: "
                   "'download the weights from the web page'); --weights takes a torch checkpoint of tensors "
                   "(.pth, .pt) or a .safetensors file\n")
    assert not (tmp_path / "out").exists()


# -------------------------------------------------- 11: --bank that is not a bank
def test_missing_bank_folder_says_it_does_not_exist(tmp_path, capsys):
    assert main(["eval", "--bank", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"segfungi eval: error: {tmp_path / 'nope'}: the folder does not exist\n"


def test_folder_of_banks_lists_them(tmp_path, capsys):
    for name in ("sweep/embeddings-1024", "sweep/fungi-1024", "other"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "build.json").write_text("{}")
    assert main(["eval", "--bank", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"segfungi eval: error: {tmp_path}: not a bank but a folder of 4 bank(s): half (incomplete), other, "
        f"sweep/embeddings-1024, sweep/fungi-1024; pass one of them, e.g. {tmp_path / 'other'}\n")
    # A mistyped bank name lists the banks next to it.
    assert main(["predict", "--bank", str(tmp_path / "otehr"), "x.png", "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err == (f"segfungi predict: error: {tmp_path / 'otehr'}: the folder does not "
                                       f"exist; banks in {tmp_path}: half (incomplete), other\n")
    assert main(["bank", "info", str(tmp_path / "sweep")]) == 2
    assert "not a bank but a folder of 2 bank(s): embeddings-1024, fungi-1024" in capsys.readouterr().err


def test_empty_folder_and_file_are_named_as_such(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BankError, match=r"empty: an empty folder, not a bank \(no manifest.json\)"):
        MemoryBank(tmp_path / "empty")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(BankError, match=r"file.json: a file, not a bank folder"):
        MemoryBank(tmp_path / "file.json")


def test_different_bank_names_the_settings_that_differ(root, bank, capsys):
    assert main(build_args(root, bank, "--seed", "3", "--bank-size", "32")) == 2
    err = capsys.readouterr().err
    assert "holds a different bank (hash " in err
    assert "sampling.seed: 0 there, 3 now; sampling.size: 48 there, 32 now); choose another --out" in err


def interrupt_after_first_shard(monkeypatch):
    """Ctrl-C once the build has written one shard (so there is work to resume)."""
    from segfungi.bank import _writers as shards

    real, calls = shards.ShardWriter.write, []

    def write_then_interrupt(self, shard):
        if calls:
            raise KeyboardInterrupt
        calls.append(shard)
        real(self, shard)

    monkeypatch.setattr(shards.ShardWriter, "write", write_then_interrupt)


def test_resume_with_other_settings_names_them(root, tmp_path, monkeypatch, capsys):
    interrupt_after_first_shard(monkeypatch)
    out = tmp_path / "bank"
    assert main(build_args(root, out, "--set", "bank.shard_images=2")) == 130
    assert main(build_args(root, out, "--set", "bank.shard_images=2", "--resume", "--aug-epochs", "2")) == 2
    err = capsys.readouterr().err
    assert "the incomplete build there used other settings (hash " in err
    assert "sampling.aug_epochs: 1 there, 2 now); cannot resume it with these: to build with these settings, " \
           f"remove {out} or choose another --out" in err


def test_a_build_that_wrote_no_shard_is_taken_over(root, tmp_path, monkeypatch, capsys):
    """A build stopped before its first shard (e.g. at a corrupt image) kept nothing: a
    rerun with other settings (e.g. --on-bad-sample skip, which drops the image) starts
    afresh instead of asking for --resume and then refusing it."""
    from segfungi.bank import _writers as shards

    def interrupt(self, shard):
        raise KeyboardInterrupt

    out = tmp_path / "bank"
    with monkeypatch.context() as patch:
        patch.setattr(shards.ShardWriter, "write", interrupt)
        assert main(build_args(root, out)) == 130
    assert (out / "build.json").exists()
    assert main(["bank", "info", str(out)]) == 0
    assert "stopped before writing any shard" in capsys.readouterr().out
    assert main(build_args(root, out, "--aug-epochs", "2")) == 0
    err = capsys.readouterr().err
    assert "stopped before writing any shard; starting it afresh" in err
    assert MemoryBank(out).identity.sampling.aug_epochs == 2


def test_settings_differences_by_hand():
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": None}
    new = {"a": 1.0, "b": {"c": [1, 3], "f": True}, "e": None}
    assert [d.there_now() for d in differences(old, new)] == [
        "a: 1 there, 1.0 now",  # the bank hash (JSON) tells them apart too
        "b.c: [1, 2] there, [1, 3] now",
        "b.d: 'x' there, '(absent)' now",
        "b.f: '(absent)' there, True now",
    ]
    assert differences(old, old) == []


# ------------------------------------------------ 12: flags, help, ignored keys
def _parsers(parser: argparse.ArgumentParser, name: str = "segfungi"):
    """Every (sub-)parser of the command line with its full name. argparse has no public
    API for this walk; `_actions` is stable across Python versions."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {action.option_strings or action.dest}"
               for name, parser in _parsers(build_parser())
               for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert missing == []
    names = [name for name, _ in _parsers(build_parser())]
    assert {"segfungi build-bank", "segfungi eval", "segfungi bank verify", "segfungi classify text"} <= set(names)


def test_each_command_shows_only_the_flags_it_uses():
    parsers = dict(_parsers(build_parser()))
    build, predict, evaluate = (_options(parsers[f"segfungi {c}"]) for c in ("build-bank", "predict", "eval"))
    for flag in ("--k", "--temperature", "--max-images"):
        assert flag not in build
        assert flag in evaluate
    for flag in ("--root", "--dataset", "--max-images"):
        assert flag not in predict
    assert predict["--on-bad-sample"].dest == "bad_image_policy"  # its own: images, not data.on_bad_sample
    for flag in ("--root", "--dataset", "--features", "--bank-size", "--aug-epochs", "--seed", "--resume", "--index"):
        assert flag in build
    assert {"--k", "--temperature", "--index", "--weights"} <= set(predict)
    help_text = parsers["segfungi build-bank"].format_help()
    assert "--temperature" not in help_text and "--max-images" not in help_text


def test_eval_warns_about_build_time_keys(bank, capsys):
    assert main(["eval", "--bank", str(bank), "--max-images", "1", "--quiet",
                 "--set", "bank.size=5", "--set", "eval.k=3", "--set", "data.train_split=trainaug"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "segfungi eval: warning: --set bank.size=5 is ignored: bank.size is fixed when a bank is built "
        "(this bank: bank.size=48); build another bank with segfungi build-bank to change it",
        "segfungi eval: warning: --set data.train_split=trainaug is ignored: data.train_split is fixed when "
        "a bank is built (this bank: data.train_split='train'); build another bank with segfungi build-bank "
        "to change it",
    ]


def test_no_warning_for_query_keys(capsys):
    args = argparse.Namespace(set=["eval.k=3", "index.num_leaves_to_search=8", "data.val_split=val", "oops"])
    assert warn_ignored_build_keys(args, "eval", {"bank": {"size": 48}}) == []
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ --verbose
@pytest.mark.parametrize("argv, expected", [
    (["build-bank", "--print-config"], False),
    (["build-bank", "--print-config", "--verbose"], True),
    (["--verbose", "build-bank", "--print-config"], True),
    (["bank", "info", "{bank}", "--verbose"], True),  # nested sub-commands take it too
    (["bank", "info", "{bank}"], False),
])
def test_verbose_flag_is_stored(argv, expected, bank, monkeypatch, capsys):
    monkeypatch.delenv(logging_setup.ENV_VAR, raising=False)
    seen = []  # verbose() as the command itself sees it
    real_set = logging_setup.set_verbose
    monkeypatch.setattr(logging_setup, "set_verbose",
                        lambda on: (real_set(on), seen.append(logging_setup.verbose())))
    assert main([arg.format(bank=bank) for arg in argv]) == 0
    assert seen == [expected]
    # Scoped to the command: a Python session (tests, notebooks) is left as it was.
    assert os.environ.get(logging_setup.ENV_VAR) is None and not logging_setup.verbose()


def test_verbose_environment_variable(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(logging_setup.ENV_VAR, value)
        assert logging_setup.verbose() is expected
