"""A benchmark protocol is one registration: a toy single-size protocol ("single", its own
column label and titles, the full-data preset's keys) runs end to end on generated data
beside the built-in full-data table: bank, evaluation, results.md/csv/json/tex, the
figure and the dry run; its cell equals the full-data cell of the same size."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import tiny_settings
from segfungi.cli import main
from segfungi.experiments.benchmark import (
    RUN_FILE,
    BenchmarkProtocol,
    Cell,
    plan_cells,
    protocol_names,
    read_records,
    register_protocol,
    run_benchmark,
    unregister_protocol,
    write_report,
)
from segfungi.infra.errors import ConfigError

SIZE = 1024


def _single_cells(settings: dict, dataset: str) -> list[Cell]:
    """One bank per dataset: the smallest of benchmark.sizes."""
    sizes = settings["benchmark"]["sizes"]
    return [Cell(dataset, "single", size=int(min(sizes)))] if sizes else []


SINGLE = BenchmarkProtocol("single", "size", _single_cells, dataset_key="full",
                           title="one bank, the toy single-size protocol", compare_title="single bank, mIoU (%)",
                           panel_title="single bank", x_label="single bank (patches)", label="single")


@pytest.fixture
def single():
    register_protocol(SINGLE)
    yield SINGLE
    unregister_protocol("single")


def settings_for(root, **benchmark):
    return tiny_settings(root, benchmark={"datasets": ["voc"], "roots": {"voc": str(root)}, "sizes": [SIZE],
                                          "fractions": [], "features": ["embeddings"], **benchmark},
                         data={"image_size": 128})


def test_names_load_no_torch_and_the_builtins_come_first():
    code = ("import sys; from segfungi.experiments.benchmark import protocol_names; "
            "assert protocol_names() == ('full', 'fewshot'), protocol_names(); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_protocol_is_registered_once_and_must_name_an_axis(single):
    assert protocol_names() == ("full", "fewshot", "single")
    with pytest.raises(ValueError, match="already registered"):
        register_protocol(SINGLE)
    with pytest.raises(ValueError, match="axis must be one of size, fraction"):
        BenchmarkProtocol("bad", "depth", _single_cells, "full", "t", "t", "t", "x", "bad")


def test_a_toy_protocol_runs_end_to_end(single, demo_voc_root, tmp_path):
    settings = settings_for(demo_voc_root)
    assert [c.protocol for c in plan_cells(settings)] == ["full", "single"]
    out = tmp_path / "out"
    report = run_benchmark(settings, out, progress=False)
    by_protocol = {r["protocol"]: r for r in report["records"]}
    assert set(by_protocol) == {"full", "single"}
    toy, full = by_protocol["single"], by_protocol["full"]
    # Its bank lives in its own folder, and is the full-data bank of that size: the same numbers.
    assert (out / "banks" / "voc" / "single" / f"size-{SIZE}").is_dir()
    assert toy["bank_hash"] == full["bank_hash"] and toy["miou"] == full["miou"]
    assert toy["bank_size_requested"] == SIZE and toy["fraction"] is None

    run = json.loads((out / RUN_FILE).read_text())
    assert run["planned"] == {"full": {"voc": {str(SIZE): 1}}, "single": {"voc": {str(SIZE): 1}}}
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| cells | 2 of 2 table cells done" in md
    assert "### One bank, the toy single-size protocol" in md and "### Full training split" in md
    assert "generated demo data: published numbers are for the real dataset" in md
    tex = (out / "results.tex").read_text(encoding="utf-8")
    assert "one bank, the toy single-size protocol" in tex
    rows = json.loads((out / "results.json").read_text())["records"]
    assert sorted(r["protocol"] for r in rows) == ["full", "single"]
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        assert sorted(r["protocol"] for r in csv.DictReader(f)) == ["full", "single"]
    assert (out / "voc.png").stat().st_size > 0
    assert {r["protocol"] for r in read_records(out / "results.json")} == {"full", "single"}

    # On real data the toy has no published number, and says why; the full-data cell is looked up.
    real = [r | {"generated_data": False} for r in read_records(out / "results.json")]
    written = write_report(tmp_path / "real", real, report["run"] | {"generated_data": []})
    md = written["results.md"].read_text(encoding="utf-8")
    assert "no published numbers for the single protocol" in md
    assert "no published number for this model (vit_tiny_patch16_224)" in md

    # A toy cell not run yet is planned (run["planned"]): counted, and its table shows it missing.
    partial = write_report(tmp_path / "partial", [r for r in real if r["protocol"] == "full"], report["run"])
    md = partial["results.md"].read_text(encoding="utf-8")
    assert "| cells | 1 of 2 table cells done" in md and "### One bank, the toy single-size protocol" in md

    # Read back once the protocol is gone: its records are refused by name.
    unregister_protocol("single")
    with pytest.raises(ConfigError, match="protocol must be one of full, fewshot"):
        read_records(out / "results.json")
    register_protocol(SINGLE)


def test_a_toy_protocol_in_the_dry_run(single, demo_voc_root, tmp_path, capsys):
    argv = ["benchmark", "--config", "demo", "--datasets", "voc", "--root", f"voc={demo_voc_root}",
            "--sizes", str(SIZE), "--fractions", "--out", str(tmp_path / "o"), "--set", "data.image_size=128",
            "--dry-run"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"voc full {SIZE:,}" in text and f"voc single {SIZE:,}" in text
    assert not (tmp_path / "o").exists()
