"""The bad-input corpus (tests/bad_inputs.py) through the real command line.

Every broken dataset goes through `segfungi build-bank --on-bad-sample error|skip`
(in-process via segfungi.cli.main): a documented error is exit code 2 and one line
naming the file, never a traceback; a skipped sample is reported on stderr and in the
manifest and the bank holds the other samples; unusual but valid input is read as
documented. Every broken config gives exit code 2 and one line naming the file and the
key (with the allowed keys for unknown ones)."""

from __future__ import annotations

import json

import pytest

from bad_inputs import CONFIG_CASES, DATASET_CASES
from segfungi.cli import main

BUILD = ["--random-init", "--backbone", "vit_tiny_patch16_224", "--features", "embeddings",
         "--bank-size", "48", "--set", "data.image_size=64", "--quiet"]


def shown(text: str) -> str:
    """How the CLI prints a name that is not UTF-8 (escaped, never a UnicodeEncodeError)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("generator", DATASET_CASES, ids=lambda g: g.__name__)
def test_bad_dataset_through_the_cli(tmp_path, capsys, generator, policy):
    root = tmp_path / "data"
    case = generator(root)
    out = tmp_path / "bank"
    code = main(["build-bank", "--dataset", case.layout, "--root", str(root), "--split", case.split,
                 "--on-bad-sample", policy, "--out", str(out), *BUILD])
    captured = capsys.readouterr()
    stops = case.effect == "fatal" or (case.effect == "sample" and policy == "error")
    if stops:
        line = error_line(captured.err)
        assert code == 2 and line.startswith("segfungi build-bank: error: ")
        if case.name == "every_sample_bad" and policy == "error":
            assert "image file is empty" in line  # the first bad sample stops it
        else:
            assert shown(case.path) in line
        assert not (out / "manifest.json").exists()
        return
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = manifest["skipped_samples"]
    if case.effect == "sample":  # skip: dropped, reported, the rest is used
        assert [image_id for image_id, _ in skipped] == [case.bad_id]
        assert case.path in skipped[0][1]
        assert "skipped 1 bad sample(s)" in captured.err and shown(case.path) in captured.err
        assert manifest["identity"]["dataset"]["num_images"] == 2
        assert "1 bad samples skipped" in captured.out
    else:  # valid input, read as documented
        assert skipped == [] and manifest["identity"]["dataset"]["num_images"] == 3
        if policy == "error":
            case.check(root)


@pytest.mark.parametrize("name, text, words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_file_through_the_cli(tmp_path, capsys, name, text, words):
    config = tmp_path / f"{name}.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["build-bank", "--config", str(config), "--root", str(tmp_path), "--out", str(tmp_path / "b"), *BUILD])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and f"segfungi build-bank: error: {config}" in line
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("override, words", [
    ("bank.sise=3", ["--set bank.sise=3", "unknown key 'bank.sise'", "allowed here:", "shard_images"]),
    ("eval.k=many", ["'eval.k' must be int"]),
    ("bank.seed=2001-13-01", ["'bank.seed' must be int"]),  # PyYAML's ValueError on a bad date
    ("bank.seed=-1", ["'bank.seed' must be 0 or more"]),
    ("index.kind=fastest", ["'index.kind' must be one of auto, exact, scann, device-exact"]),
    ("sweep.sizes=[1024, big]", ["'sweep.sizes' must be a list of int"]),
    ("fungi.proj_dim=1.5", ["'fungi.proj_dim' must be int or null"]),
    ("data.subset_fraction=2", ["'data.subset_fraction' must be in (0, 1]"]),
    ("bank", ["must look like section.key=value"]),
    ("bank=3", ["'bank' must be a mapping"]),
])
def test_bad_override_through_the_cli(tmp_path, capsys, override, words):
    code = main(["build-bank", "--root", str(tmp_path), "--out", str(tmp_path / "b"), *BUILD, "--set", override])
    line = error_line(capsys.readouterr().err)
    assert code == 2
    for word in words:
        assert word in line, (word, line)


def test_eval_of_a_folder_that_is_not_a_bank(tmp_path, capsys):
    (tmp_path / "manifest.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe not a manifest")
    assert main(["eval", "--bank", str(tmp_path)]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'manifest.json'}: not valid JSON" in line
