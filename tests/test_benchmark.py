"""`segfungi benchmark` on generated data: every cell equals a separate build-bank + eval,
a killed run resumes, a results folder of another model is refused, the plan is printed."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import SUPPORT_DIR, MemoryBank
from segfungi.cli import main
from segfungi.data import build_dataset
from segfungi.experiments.benchmark import plan_cells, run_benchmark
from segfungi.inference.evaluation import evaluate
from segfungi.infra.errors import ConfigError

SIZES = (1024, 2048)  # exact below 1500 patches, ScaNN above: both index paths


def lists_folder(root: Path, folder: Path) -> Path:
    """Few-shot lists in the standard layout: two lists of 1/8 of the generated trainaug ids."""
    ids = build_dataset("voc", root, "trainaug").ids
    lists = folder / "voc" / "1_div_8"
    lists.mkdir(parents=True)
    for draw, chosen in enumerate((ids[:2], ids[2:4])):
        (lists / f"trainaug_2_{draw}.txt").write_text("\n".join(chosen) + "\n")
    return folder


def benchmark_settings(root: Path, lists: Path, **sections) -> dict:
    overrides = {"benchmark": {"datasets": ["voc"], "roots": {"voc": str(root)}, "sizes": list(SIZES),
                               "fractions": [0.125], "subsets": str(lists)},
                 "index": {"exact_below": 1500}, "data": {"image_size": 256}, **sections}
    return tiny_settings(root, **overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_voc_root):
    folder = tmp_path_factory.mktemp("benchmark")
    settings = benchmark_settings(demo_voc_root, lists_folder(demo_voc_root, folder / "lists"))
    report = run_benchmark(settings, folder / "out", progress=False)
    return settings, folder / "out", report


def test_every_cell_equals_a_separate_build_bank_and_eval(finished_run, tmp_path):
    settings, out, report = finished_run
    records = report["records"]
    assert len(records) == 2 * (len(SIZES) + 2)  # (2 sizes + 2 lists) × 2 feature kinds
    for record in records:
        if record["features"] != "fungi":
            continue
        alone = build_bank(record["settings"], tmp_path / f"{record['bank_size']}-{record['trial']}", progress=False)
        for kind, path in (("fungi", alone), ("embeddings", alone / SUPPORT_DIR)):
            mine = next(r for r in records if r["features"] == kind and r["bank_size"] == record["bank_size"]
                        and r["trial"] == record["trial"])
            assert MemoryBank(path).hash == mine["bank_hash"]
            assert [s["checksums"] for s in MemoryBank(path).shards] == \
                   [s["checksums"] for s in MemoryBank(mine["bank"]).shards]
            assert evaluate(path, record["settings"], progress=False)["miou"] == mine["miou"]
    for name in ("results.md", "results.csv", "results.json", "results.tex", "voc.png"):
        assert (out / name).is_file(), name


def test_a_killed_run_resumes_and_reads_back_finished_cells(finished_run, tmp_path, monkeypatch):
    settings, done, report = finished_run
    out = tmp_path / "out"
    import segfungi.inference.evaluation as evaluation

    real, calls, killed = evaluation.evaluate, [], []

    def killed_at_the_third(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(settings, out, progress=False)
    finished = sorted(p.relative_to(out) for p in (out / "cells").rglob("*.json"))
    assert len(finished) == 2
    calls.clear()
    resumed = run_benchmark(settings, out, progress=False)["records"]
    assert len(calls) == len(report["records"]) - 2  # the two finished cells were read back
    key = lambda r: (r["bank_size"], r["trial"], r["features"])  # noqa: E731
    assert sorted((key(r), r["miou"], r["bank_hash"]) for r in resumed) == \
           sorted((key(r), r["miou"], r["bank_hash"]) for r in report["records"])


def test_a_results_folder_of_another_model_is_refused(finished_run):
    settings, out, _ = finished_run
    other = copy.deepcopy(settings)
    other["fungi"]["proj_seed"] = 7
    with pytest.raises(ConfigError, match=r"holds benchmark results of another model or other settings "
                                          r"\(fungi.proj_seed: 0 there, 7 now\)"):
        run_benchmark(other, out, progress=False)


def test_the_cells_of_the_default_protocol():
    """VOC and ADE20K, three sizes, five standard lists of 1/128, 1/64 and 1/8 each."""
    from segfungi.config import load_config

    cells = plan_cells(load_config())
    for dataset in ("voc", "ade20k"):
        mine = [c for c in cells if c.dataset == dataset]
        assert [c.size for c in mine if c.protocol == "full"] == [102400, 1024000, 10240000]
        fewshot = [c for c in mine if c.protocol == "fewshot"]
        assert [(c.fraction_label, sum(1 for d in fewshot if d.fraction == c.fraction)) for c in fewshot[::5]] == \
               [("1/128", 5), ("1/64", 5), ("1/8", 5)]


def test_the_cli_dry_run_prints_the_plan_without_building(demo_voc_root, tmp_path, capsys):
    lists = lists_folder(demo_voc_root, tmp_path / "lists")
    argv = ["benchmark", "--config", "demo", "--datasets", "voc", "ade20k", "--root", f"voc={demo_voc_root}",
            "--sizes", "2048", "102400", "--fractions", "1/8", "--subsets", str(lists), "--out", str(tmp_path / "o"),
            "--set", "data.image_size=128", "--dry-run"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "forward" in text and "s/image" in text and "peak memory" in text
    assert re.search(r"separate build-bank \+ eval runs of these cells would take ~[\d:]+: the shared passes "
                     r"take 0\.\d\d× that", text), text
    assert "voc full 2,048" in text and "voc 1/8 trainaug_2_0" in text and "ade20k full 102,400" in text
    assert "assumed the reference 20210 training / 2000 validation images" in text
    assert not (tmp_path / "o").exists()


def test_a_missing_root_and_a_list_of_unknown_ids_are_named(finished_run, demo_voc_root, tmp_path):
    settings, _, _ = finished_run
    no_root = copy.deepcopy(settings)
    no_root["benchmark"]["roots"] = {}
    with pytest.raises(ConfigError, match=r"benchmark.roots has no root folder for 'voc': pass --root voc=DIR"):
        run_benchmark(no_root, tmp_path / "a", progress=False)
    lists = tmp_path / "lists" / "voc" / "1_div_8"
    lists.mkdir(parents=True)
    (lists / "trainaug_2_0.txt").write_text("2008_000001\n2008_000002\n")
    bad = copy.deepcopy(settings)
    bad["benchmark"].update(subsets=str(tmp_path / "lists"), sizes=[])
    with pytest.raises(Exception, match=r"2 ids are not in voc trainaug"):
        run_benchmark(bad, tmp_path / "b", progress=False)


def test_records_carry_what_produced_them(finished_run):
    _, out, report = finished_run
    record = report["records"][0]
    assert record["weights"].startswith("random-init:") and record["versions"]["torch"]
    assert set(record["per_class_iou"]) == set(MemoryBank(record["bank"]).classes)
    assert json.loads((out / "benchmark.json").read_text())["identity"]["fungi"]["proj_seed"] == 0


def test_out_of_memory_mid_cell_names_the_settings_and_keeps_the_finished_cells(tmp_path, demo_voc_root,
                                                                                  monkeypatch):
    """torch.OutOfMemoryError in a cell's evaluation stops the run with a ConfigError naming the
    cell and the settings that need less memory; the cells finished before it are kept and
    the same command resumes from them."""
    import torch

    import segfungi.inference.evaluation
    from segfungi.infra.errors import ConfigError

    settings = benchmark_settings(demo_voc_root, lists_folder(demo_voc_root, tmp_path / "lists"))
    out = tmp_path / "out"
    real, calls = segfungi.inference.evaluation.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(segfungi.inference.evaluation, "evaluate", evaluate)
    with pytest.raises(ConfigError) as raised:
        run_benchmark(settings, out, progress=False)
    said = str(raised.value)
    assert f"voc full {SIZES[1]}: evaluating its embeddings bank: out of memory" in said
    assert all(key in said for key in ("eval.batch_size (now", "bank.batch_size", "index.device_shards",
                                       "index.kind=scann", "the same command resumes"))
    kept = {path: path.stat().st_mtime_ns for path in (out / "cells").rglob("*.json")}
    assert len(kept) == 2  # the first size's two feature kinds
    monkeypatch.setattr(segfungi.inference.evaluation, "evaluate", real)
    report = run_benchmark(settings, out, progress=False)
    assert len(report["records"]) == 2 * (len(SIZES) + 2)
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in kept.items())  # read back, not redone
