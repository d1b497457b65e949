import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi.cli import main
from segfungi.components import open_dataset, open_train_dataset
from segfungi.config import load_config
from segfungi.data import SampleFiles, SegDataset, subset
from segfungi.experiments.fewshot import (
    Trial,
    fewshot_table,
    fraction_label,
    plan_trials,
    run_fewshot,
    summarise,
    trial_settings,
)
from segfungi.infra.errors import ConfigError

FEWSHOT_PRESETS = ["fewshot_voc_vits16", "fewshot_voc_vitb16", "fewshot_ade20k_vits16", "fewshot_ade20k_vitb16"]


# ------------------------------------------------------------- subsets of trials
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


def test_trials_draw_disjoint_reproducible_subsets(demo_voc_root):
    # The seeds of a few-shot run pick disjoint training subsets while they fit
    # (12 demo training images, 1/4 each: four trials cover the split once), so the
    # spread over seeds measures different images.
    settings = tiny_settings(demo_voc_root, fewshot={"fractions": [0.25], "seeds": [0, 1, 2, 3]})
    drawn = [open_train_dataset(trial_settings(settings, t)).ids for t in plan_trials(settings)]
    assert all(len(ids) == 3 for ids in drawn)
    assert sorted(i for ids in drawn for i in ids) == sorted(open_dataset(settings, "train").ids)
    again = plan_trials(settings)[2]
    assert open_train_dataset(trial_settings(settings, again)).ids == drawn[2]


# ------------------------------------------------------------- planning, tables
def test_presets_load_with_paper_fewshot_settings():
    for name in FEWSHOT_PRESETS:
        settings = load_config(name)
        assert settings["bank"]["size"] == 2048 * 10**4 and settings["bank"]["aug_epochs"] == 8
        assert (settings["eval"]["k"], settings["eval"]["temperature"]) == (90, 0.1)
        assert (settings["index"]["num_leaves_to_search"], settings["index"]["reorder"]) == (256, 1800)
        assert settings["fewshot"]["fractions"] == [1 / 128, 1 / 64]


# settings_hash of each preset's trial settings (less the fewshot section and later keys, with the
# packaged standard list paths cut to segfungi/data/...), computed with the code before
# the few-shot values moved from fewshot.* to bank/eval/index (commit ba36f84).
TRIALS_BEFORE = {
    "fewshot_voc_vits16": ("9fb90083ad95e8e0", "069b8cc276dd2437"),
    "fewshot_voc_vitb16": ("c262c8c0a8b17f92", "44631418af39f53f"),
    "fewshot_ade20k_vits16": ("ade8655192bdfdf4", "20377e432b003320"),
    "fewshot_ade20k_vitb16": ("f42bcd081aa200e6", "fe2cfb9f443bccbf"),
}


@pytest.mark.parametrize("name", FEWSHOT_PRESETS)
def test_preset_trials_resolve_to_the_settings_they_had_before(name):
    from segfungi.infra.storage import settings_hash

    def resolved(overrides):
        settings = load_config(name, overrides)
        trials = [trial_settings(settings, t) for t in plan_trials(settings)]
        for one in trials:
            one.pop("fewshot")
            one.pop("benchmark")  # a section added after ba36f84
            # Keys added after ba36f84 (their defaults keep every feature as it was).
            one["fungi"].pop("projection_dtype")
            one["fungi"].pop("projection_kernel")
            one["fungi"].pop("support_views")  # issue 24; its default (shared) keeps the bank as it was
            one["data"].pop("mean")
            one["data"].pop("std")
            for key in ("device_dtype", "device_margin", "device_headroom", "device_shards"):  # issue 27
                one["index"].pop(key)
            if one["data"]["subset_file"]:
                one["data"]["subset_file"] = one["data"]["subset_file"].split("segfungi/data/")[1]
        return trials

    random, standard = resolved([]), resolved(["fewshot.subsets=standard"])
    assert (len(random), len(standard)) == (6, 10)
    assert (settings_hash(random), settings_hash(standard)) == TRIALS_BEFORE[name]
    for one in random + standard:
        assert (one["bank"]["size"], one["bank"]["aug_epochs"]) == (20480000, 8)
        assert (one["eval"]["k"], one["eval"]["temperature"]) == (90, 0.1)
        assert (one["index"]["num_leaves_to_search"], one["index"]["reorder"]) == (256, 1800)


def test_retired_fewshot_keys_say_where_their_value_lives():
    for old, new in [("bank_size", "bank.size"), ("aug_epochs", "bank.aug_epochs"), ("k", "eval.k"),
                     ("temperature", "eval.temperature"), ("reorder", "index.reorder"),
                     ("num_leaves_to_search", "index.num_leaves_to_search")]:
        with pytest.raises(ConfigError, match=rf"unknown key 'fewshot.{old}' .*set {new} instead"):
            load_config(overrides=[f"fewshot.{old}=1"])


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


def test_trial_settings_set_the_subset_and_seed_and_keep_bank_eval_index():
    # The few-shot values live in bank/eval/index (the fewshot_* presets): an override of
    # them is what every trial uses.
    settings = load_config("fewshot_voc_vits16", overrides=["eval.k=30", "bank.aug_epochs=2"])
    one = trial_settings(settings, Trial(seed=5, fraction=1 / 64))
    assert one["data"]["subset_fraction"] == 1 / 64 and one["data"]["subset_seed"] == 5
    assert one["data"]["subset_file"] is None
    assert (one["bank"]["size"], one["bank"]["aug_epochs"], one["bank"]["seed"]) == (20480000, 2, 5)
    assert (one["eval"]["k"], one["eval"]["temperature"]) == (30, 0.1)
    assert (one["index"]["num_leaves_to_search"], one["index"]["reorder"]) == (256, 1800)
    assert settings["bank"]["seed"] == 0  # the input is not modified
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
def test_fewshot_end_to_end(demo_voc_root, tmp_path, capsys):
    # The 32×32 grid at 512² stays; a random-init ViT-Tiny, 2 training images per trial,
    # one augmentation epoch and 2 evaluated images keep it fast.
    out = tmp_path / "fewshot"
    settings = tiny_settings(demo_voc_root, eval={"max_images": 2}, bank={"aug_epochs": 1, "size": 2048},
                             fewshot={"fractions": [1 / 6], "seeds": [0, 1], "out": str(out)})
    report = run_fewshot(settings, progress=False)
    assert len(report["trials"]) == 4  # 2 seeds × (embeddings, FUNGI)
    for trial in report["trials"]:
        assert trial["images"] == 2  # 1/6 of the 12 demo training images
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
    code = main(["fewshot", "--config", "demo", "--root", str(demo_voc_root), "--fractions", str(1 / 6),
                 "--seeds", "0", "1", "--aug-epochs", "1", "--bank-size", "2048", "--max-images", "2",
                 "--set", "bank.shard_images=4", "--set", "bank.batch_size=4",
                 "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "1/6" in printed and "±" in printed
    rerun = json.loads((out / "fewshot.json").read_text())
    assert [t["miou"] for t in rerun["trials"]] == [t["miou"] for t in report["trials"]]
