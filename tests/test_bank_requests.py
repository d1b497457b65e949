"""Requests the data cannot meet (bank sizes), and banks that travel (absolute paths)."""

import csv
import json
import shutil

from conftest import tiny_settings
from segfungi.api import build_bank, planned_bank
from segfungi.bank import MemoryBank
from segfungi.cli import main
from segfungi.experiments.sweep import run_sweep, sweep_table

# 2 of the 12 demo training images: at most 2 × 1 epoch × 1024 = 2048 patches.
TWO_IMAGES = {"subset_fraction": 1 / 6}


def test_capped_bank_size_warns_once(demo_voc_root, tmp_path, capsys):
    settings = tiny_settings(demo_voc_root, data=TWO_IMAGES, bank={"size": 102400, "features": "fungi"})
    assert planned_bank(settings).num_patches == 2048
    bank = build_bank(settings, tmp_path / "fungi", progress=False)
    err = capsys.readouterr().err
    assert err.count("warning") == 1  # the support pass does not warn again
    assert "bank.size 102400 is more than 2 images × 1 epoch(s) × 1024 patches can give; the bank holds 2048" in err
    assert MemoryBank(bank).num_patches == 2048 and MemoryBank(bank / "support").num_patches == 2048
    # Rounding S // (N·E) down is the plan, not a cap: no warning.
    build_bank(tiny_settings(demo_voc_root, data=TWO_IMAGES, bank={"size": 2047, "features": "embeddings"}),
               tmp_path / "rounded", progress=False)
    assert "warning" not in capsys.readouterr().err


def test_sweep_builds_each_resolved_bank_once_and_labels_it(demo_voc_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    settings = tiny_settings(demo_voc_root, data=TWO_IMAGES, eval={"max_images": 1},
                             sweep={"sizes": [1024, 4096, 102400], "features": ["embeddings"], "out": str(out)})
    rows = run_sweep(settings, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "(4096, 102400 -> 2048)" in err
    assert [(r["bank_size"], r["requested_sizes"], r["train_images"]) for r in rows] == [
        (1024, "1024", 2), (2048, "4096 102400", 2)]
    assert sorted(p.name for p in (out / "banks").iterdir()) == ["embeddings-1024", "embeddings-2048"]
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [(t["bank_size"], t["requested_sizes"]) for t in table] == [("1024", "1024"), ("2048", "4096 102400")]
    assert [r["bank_size"] for r in json.loads((out / "sweep.json").read_text())] == [1024, 2048]
    assert (out / "miou_vs_bank_size.png").stat().st_size > 0
    header = sweep_table(rows).splitlines()[1]
    assert "1024" in header and "2048" in header and "4096" not in header


def test_bank_records_absolute_paths_and_evaluates_from_anywhere(demo_voc_root, tmp_path, monkeypatch, capsys):
    data = tmp_path / "project" / "data"
    shutil.copytree(demo_voc_root, data)
    monkeypatch.chdir(tmp_path / "project")
    settings = tiny_settings("data", data=TWO_IMAGES, bank={"size": 2048, "features": "embeddings"})
    bank = build_bank(settings, "bank", progress=False).resolve()
    assert MemoryBank(bank).settings["data"]["root"] == str(data)  # absolute, as built from "data"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--bank", str(bank), "--max-images", "1", "--quiet"]) == 0
    capsys.readouterr()

    # The recorded root is gone (the data moved): the message says where the path came from.
    moved = tmp_path / "moved"
    data.rename(moved)
    assert main(["eval", "--bank", str(bank), "--max-images", "1", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert f"{data}: dataset root folder missing" in err
    assert f"recorded in the bank {bank / 'manifest.json'}" in err and "pass --root DIR" in err
    assert main(["eval", "--bank", str(bank), "--root", str(moved), "--max-images", "1", "--quiet"]) == 0


def test_sweep_plot_ticks_are_the_sizes_built(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from segfungi.inference import viz
    rows = [{"features": "embeddings", "bank_size": s, "miou": 0.3} for s in (2048, 32768)]
    captured = {}
    original = Figure.savefig

    def keep(fig, *args, **kwargs):  # the tick labels of the figure as it is saved
        captured["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    viz.plot_miou_vs_bank_size(rows, tmp_path / "sweep.png")
    assert captured["ticks"] == ["2,048", "32,768"]
