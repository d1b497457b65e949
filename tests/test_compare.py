"""`segfungi compare`: benchmark results folders become one table per dataset; folders
of different protocols are refused or lettered, never mixed silently."""

from __future__ import annotations

import copy
import csv
import io

import pytest

from segfungi.cli import main
from segfungi.config import load_config
from segfungi.experiments.benchmark import write_report
from segfungi.experiments.compare import compare_folders, write_comparison
from segfungi.infra.errors import ConfigError

SIZES = (102400, 1024000)


def settings(**changes):
    base = load_config(overrides=[{"data": {"dataset": "voc", "train_split": "trainaug", "image_size": 512}}])
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        base[section][key] = value
    return base


def record(backbone, weights, features, miou, *, protocol="full", size=None, fraction=None, trial=None,
           run_settings=None, dataset="voc", bank_size=None):
    return {
        "dataset": dataset, "protocol": protocol, "features": features,
        "bank_size_requested": size, "fraction": fraction, "trial": trial,
        "bank_size": bank_size or size or 20480000, "patches_per_view": 1024, "train_images": 1464 if fraction is None
        else 12, "aug_epochs": 1 if protocol == "full" else 8, "eval_images": 1449, "miou": miou,
        "pixel_accuracy": 0.9, "per_class_iou": {"background": miou}, "bank_hash": f"{backbone}-{features}-{size}",
        "bank": "/banks/x", "backbone": backbone, "weights": weights, "image_size": 512, "device": "cpu",
        "versions": {"segfungi": "0.1.0"}, "timings": {"build_seconds": 1.0, "eval_seconds": 1.0},
        "settings": copy.deepcopy(run_settings or settings()),
    }


def results_folder(path, backbone, weights, mious, *, run_settings=None, fewshot=(), capped_at=None):
    """A results folder as `segfungi benchmark` writes it, from hand-made records."""
    records = [record(backbone, weights, features, miou, size=size, run_settings=run_settings,
                      bank_size=capped_at if capped_at and size == SIZES[-1] else None)
               for features, by_size in mious.items() for size, miou in zip(SIZES, by_size)]
    records += [record(backbone, weights, "fungi", miou, protocol="fewshot", fraction="1/128", trial=f"list{i}",
                       run_settings=run_settings) for i, miou in enumerate(fewshot)]
    run = {"model": backbone, "weights": weights, "device": "cpu", "versions": {}, "started": "t0", "finished": "t1",
           "datasets": ["voc"], "sizes": list(SIZES), "fractions": ["1/128"] if fewshot else [],
           "features": list(mious)}
    write_report(path, records, run)
    return path


@pytest.fixture
def two_models(tmp_path):
    dino = results_folder(tmp_path / "dino-s16", "vit_small_patch16_224.dino", "timm-hub:timm/vit_small_patch16_224.dino",
                          {"embeddings": (0.372, 0.431), "fungi": (0.401, 0.452)}, fewshot=(0.20, 0.24, 0.22))
    dinov3 = results_folder(tmp_path / "dinov3-s16", "vit_small_patch16_dinov3.lvd1689m",
                            "timm-hub:timm/vit_small_patch16_dinov3.lvd1689m",
                            {"fungi": (0.583, 0.610)}, fewshot=(0.41,), capped_at=900000)
    return dino, dinov3


def test_two_models_become_one_table_per_dataset_and_protocol(two_models, tmp_path):
    tables = compare_folders(two_models)
    assert [(t.dataset, t.protocol) for t in tables] == [("voc", "full"), ("voc", "fewshot")]
    full, fewshot = tables
    assert full.columns == list(SIZES)
    rows = {(r.model, r.features): r for r in full.rows}
    assert set(rows) == {("vit_small_patch16_224.dino", "embeddings"), ("vit_small_patch16_224.dino", "fungi"),
                         ("vit_small_patch16_dinov3.lvd1689m", "fungi")}
    assert rows[("vit_small_patch16_224.dino", "fungi")].values[102400][0] == pytest.approx(40.1)
    assert rows[("vit_small_patch16_dinov3.lvd1689m", "fungi")].capped == (1024000,)
    (dino_fewshot, dinov3_fewshot) = fewshot.rows
    mean, std, n = dino_fewshot.values[fewshot.columns[0]]
    assert (mean, n) == (pytest.approx(22.0), 3) and std == pytest.approx(2.0)  # sample std of 20, 24, 22
    assert dinov3_fewshot.values[fewshot.columns[0]][1:] == (0.0, 1)

    written = write_comparison(tmp_path / "out", tables)
    assert sorted(written) == ["compare.csv", "compare.md", "compare.png", "compare.tex"]
    markdown = written["compare.md"].read_text()
    assert "| vit_small_patch16_dinov3.lvd1689m | pretrained weights timm/vit_small_patch16_dinov3.lvd1689m | FUNGI " \
           "| dinov3-s16 | 58.3 | 61.0† |" in markdown
    assert "| vit_small_patch16_224.dino | pretrained weights timm/vit_small_patch16_224.dino | FUNGI | dino-s16 " \
           "| 22.0 ± 2.0 |" in markdown
    assert "† the training images could not fill the bank" in markdown
    rows = list(csv.DictReader(io.StringIO(written["compare.csv"].read_text())))
    assert len(rows) == 2 * 2 + 2 + 2  # full: 3 rows × 2 sizes; few-shot: 2 rows
    assert {r["miou_percent"] for r in rows if r["model"].endswith("dinov3.lvd1689m") and r["column"] == "102400"} \
        == {"58.3000"}
    tex = written["compare.tex"].read_text()
    assert r"\toprule" in tex and r"vit\_small\_patch16\_dinov3.lvd1689m" in tex and r"$\pm$" in tex
    assert written["compare.png"].stat().st_size > 0


def test_different_protocol_settings_are_refused_or_lettered(two_models, tmp_path):
    other_k = results_folder(tmp_path / "k20", "vit_base_patch16_224.dino", "timm-hub:timm/vit_base_patch16_224.dino",
                             {"fungi": (0.45, 0.5)}, run_settings=settings(**{"eval.k": 20}))
    with pytest.raises(ConfigError, match="voc full results were made with different protocol settings.*"
                                          "eval.k: 30 in dino-s16, 30 in dinov3-s16, 20 in k20.*--mark-differences"):
        compare_folders([*two_models, other_k])
    full = compare_folders([*two_models, other_k], mark_differences=True)[0]
    assert {r.source: r.protocol for r in full.rows} == {"dino-s16": "A", "dinov3-s16": "A", "k20": "B"}
    assert full.notes[0] == "Protocols differ in eval.k:"
    assert full.notes[1:] == ["A (dino-s16, dinov3-s16): eval.k = 30", "B (k20): eval.k = 20"]
    markdown = write_comparison(tmp_path / "out", [full])["compare.md"].read_text()
    assert "| protocol |" in markdown and "- B (k20): eval.k = 20" in markdown


def test_published_rows_are_added_and_labelled(two_models):
    full = compare_folders(two_models, published=True)[0]
    published = [r for r in full.rows if r.published]
    assert published, "the shipped sources have VOC numbers at 1024×10²"
    dino = [r for r in published if r.weights == "vit_small_patch16_224.dino" and r.features == "embeddings"]
    assert {r.source for r in dino} >= {"published: open-hummingbird-eval README, README, Example Results"}
    assert all(set(r.values) <= set(full.columns) for r in published)
    assert any("open-hummingbird-eval README" in note for note in full.notes)


def test_the_cli_writes_the_files(two_models, tmp_path, capsys):
    assert main(["compare", *map(str, two_models), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "Pascal VOC 2012: full training split" in printed and (tmp_path / "cmp" / "compare.png").is_file()


def test_a_folder_without_results_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: no results.json here"):
        compare_folders([tmp_path / "empty"])
