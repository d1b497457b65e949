import json
from pathlib import Path

import numpy as np
import pytest

from segfungi.cli import main
from segfungi.config import load_config
from segfungi.data import SampleFiles, SegDataset, subset
from segfungi.errors import ConfigError
from segfungi.fewshot import (
    Trial,
    fewshot_table,
    fraction_label,
    plan_trials,
    run_fewshot,
    summarise,
    trial_settings,
)

FEWSHOT_PRESETS = ["fewshot_voc_vits16", "fewshot_voc_vitb16", "fewshot_ade20k_vits16", "fewshot_ade20k_vitb16"]


# ------------------------------------------------------------------ subset()
def ids_only_dataset(tmp_path: Path, count: int) -> SegDataset:
    """A dataset of `count` ids without `count` images: subset() only looks at the ids."""
    image, mask = tmp_path / "image.jpg", tmp_path / "mask.png"
    image.write_bytes(b"x")
    mask.write_bytes(b"x")
    files = [SampleFiles(id=f"{i:05d}", image=image, mask=mask) for i in range(count)]
    return SegDataset(name="voc", root=tmp_path, split="trainaug", classes=["a", "b"],
                      palette=np.zeros((2, 3), np.uint8), files=files, read_mask=None, source="test")


def test_subset_size_follows_the_paper(tmp_path):
    # FUNGI Table 4: 1/128 and 1/64 of VOC trainaug are 83 and 165 images,
    # of ADE20K training 158 and 316.
    voc, ade = ids_only_dataset(tmp_path, 10582), ids_only_dataset(tmp_path, 20210)
    assert [len(subset(voc, fraction=f)) for f in (1 / 128, 1 / 64)] == [83, 165]
    assert [len(subset(ade, fraction=f)) for f in (1 / 128, 1 / 64)] == [158, 316]


def test_subset_is_reproducible_and_inside_the_split(tmp_path):
    dataset = ids_only_dataset(tmp_path, 1000)
    first = subset(dataset, fraction=1 / 64, seed=3).ids
    again = subset(ids_only_dataset(tmp_path, 1000), fraction=1 / 64, seed=3).ids
    assert first == again
    assert len(set(first)) == len(first) and set(first) <= set(dataset.ids)
    assert subset(dataset, fraction=1 / 64, seed=4).ids != first


@pytest.mark.xfail(strict=False, reason=(
    "wanted, not yet the contract of segfungi.data.subset: seeds draw independently "
    "(np.random.default_rng(seed).choice), so subsets of different seeds may share images"))
def test_subsets_of_different_seeds_are_disjoint_while_they_fit(tmp_path):
    # Three trials at 1/8 fit into the split side by side: no image should serve two of
    # them, so the spread over seeds measures different data, not the same images again.
    dataset = ids_only_dataset(tmp_path, 64)
    drawn = [set(subset(dataset, fraction=1 / 8, seed=seed).ids) for seed in range(3)]
    assert all(len(d) == 8 for d in drawn)
    assert not (drawn[0] & drawn[1]) and not (drawn[0] & drawn[2]) and not (drawn[1] & drawn[2])


def test_subset_file_gives_exactly_its_ids(tmp_path):
    dataset = ids_only_dataset(tmp_path, 50)
    listed = tmp_path / "split.txt"
    listed.write_text("00007\n00003\n00042\n")
    assert set(subset(dataset, ids_file=listed).ids) == {"00007", "00003", "00042"}


# ------------------------------------------------------------ planning, tables
def test_presets_load_with_paper_fewshot_settings():
    for name in FEWSHOT_PRESETS:
        fewshot = load_config(name)["fewshot"]
        assert fewshot["bank_size"] == 2048 * 10**4 and fewshot["aug_epochs"] == 8
        assert (fewshot["k"], fewshot["temperature"]) == (90, 0.1)
        assert (fewshot["num_leaves_to_search"], fewshot["reorder"]) == (256, 1800)
        assert fewshot["fractions"] == [1 / 128, 1 / 64]


def test_fraction_label():
    assert fraction_label(1 / 128) == "1/128"
    assert fraction_label(0.3) == "0.3"


def test_plan_trials_fractions_files_and_seeds():
    settings = load_config(overrides=["fewshot.fractions=[0.25, 0.5]", "fewshot.seeds=[0, 7]"])
    trials = plan_trials(settings)
    assert [(t.fraction, t.seed) for t in trials] == [(0.25, 0), (0.25, 7), (0.5, 0), (0.5, 7)]
    files = plan_trials(settings, subset_files=["a/first.txt", "b/second.txt"])
    assert [(t.subset, t.seed) for t in files] == [("first", 0), ("first", 7), ("second", 0), ("second", 7)]
    from_config = plan_trials(load_config(overrides=["data.subset_file=splits/one.txt"]))
    assert {t.subset_file for t in from_config} == {"splits/one.txt"}
    with pytest.raises(ConfigError, match="distinct names"):
        plan_trials(settings, subset_files=["a/same.txt", "b/same.txt"])
    with pytest.raises(ConfigError, match="fractions"):
        plan_trials(load_config(overrides=["fewshot.fractions=[0, 0.5]"]))


def test_trial_settings_map_the_fewshot_section():
    settings = load_config("fewshot_voc_vits16", overrides=["eval.k=30", "fewshot.aug_epochs=2"])
    one = trial_settings(settings, Trial(seed=5, fraction=1 / 64))
    assert one["data"]["subset_fraction"] == 1 / 64 and one["data"]["subset_seed"] == 5
    assert one["data"]["subset_file"] is None
    assert (one["bank"]["size"], one["bank"]["aug_epochs"], one["bank"]["seed"]) == (20480000, 2, 5)
    assert (one["eval"]["k"], one["eval"]["temperature"]) == (90, 0.1)
    assert (one["index"]["num_leaves_to_search"], one["index"]["reorder"]) == (256, 1800)
    assert settings["eval"]["k"] == 30  # the input is not modified
    listed = trial_settings(settings, Trial(seed=1, subset_file="ids.txt"))
    assert listed["data"]["subset_file"] == "ids.txt" and listed["data"]["subset_fraction"] is None


def row(subset, seed, kind, miou, images=10, subset_file=None):
    return {"subset": subset, "subset_file": subset_file, "seed": seed, "features": kind,
            "miou": miou, "images": images, "bank_size": 100}


def test_summarise_mean_and_sample_std():
    rows = [row("1/8", s, "fungi", m) for s, m in [(0, 0.2), (1, 0.4), (2, 0.3)]]
    rows += [row("1/4", 0, "fungi", 0.5, images=20)]
    rows += [row(name, 0, "embeddings", m, images=9, subset_file=f"{name}.txt") for name, m in [("a", 0.1), ("b", 0.3)]]
    summary = {(r["subset"], r["features"]): r for r in summarise(rows)}
    assert summary[("1/8", "fungi")]["miou_mean"] == pytest.approx(0.3)
    assert summary[("1/8", "fungi")]["miou_std"] == pytest.approx(0.1)  # n-1
    assert summary[("1/4", "fungi")]["miou_std"] == 0.0
    # Files of one size form one group.
    assert summary[("9 images", "embeddings")]["trials"] == 2
    table = fewshot_table(list(summary.values()))
    assert "30.0 ± 10.0" in table and "1/4" in table


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from segfungi.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("fewshot_data"), layout="voc", n_images=14, seed=0, n_val=4)


def tiny_settings(root: Path, out: Path) -> dict:
    # 512² inputs keep the 32×32 patch grid; the random-init ViT-Tiny and a handful of
    # images keep it fast.
    return load_config("demo", overrides=[
        {"data": {"root": str(root)}},
        {"eval": {"max_images": 2}},
        {"fewshot": {"fractions": [0.2], "seeds": [0, 1], "aug_epochs": 1, "bank_size": 2048,
                     "out": str(out)}},
    ])


def test_fewshot_end_to_end(demo_root, tmp_path, capsys):
    out = tmp_path / "fewshot"
    report = run_fewshot(tiny_settings(demo_root, out), progress=False)
    assert len(report["trials"]) == 4  # 2 seeds × (embeddings, FUNGI)
    for trial in report["trials"]:
        assert trial["images"] == 2  # round(0.2 · 10 training images)
        assert trial["bank_size"] == 2048  # 2 images × 1 epoch × 1024 patches
        assert 0.0 <= trial["miou"] <= 1.0
    banks = {t["seed"]: t["bank"] for t in report["trials"] if t["features"] == "fungi"}
    assert banks[0] != banks[1]
    summary = {r["features"]: r for r in report["summary"]}
    assert set(summary) == {"embeddings", "fungi"} and summary["fungi"]["trials"] == 2
    saved = json.loads((out / "fewshot.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    assert (out / "fewshot.png").stat().st_size > 0

    # The command reuses the banks and the cached evaluations and prints the table.
    code = main(["fewshot", "--config", "demo", "--root", str(demo_root), "--fractions", "0.2",
                 "--seeds", "0", "1", "--aug-epochs", "1", "--bank-size", "2048", "--max-images", "2",
                 "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "1/5" in printed and "±" in printed
    rerun = json.loads((out / "fewshot.json").read_text())
    assert [t["miou"] for t in rerun["trials"]] == [t["miou"] for t in report["trials"]]
