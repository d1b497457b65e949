"""Standard few-shot subsets (open-hummingbird-eval's lists, shipped as package data),
fractions that resolve to the same subsets, and a validation subset for eval."""

import json

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi.cli import main
from segfungi.components import open_train_dataset, open_val_dataset
from segfungi.config import load_config
from segfungi.data.idlists import read_id_file
from segfungi.experiments.fewshot import (
    merge_equal_subsets,
    plan_trials,
    run_fewshot,
    standard_subset_files,
    standard_subsets_folder,
    trial_settings,
)
from segfungi.inference.evaluation import evaluate
from segfungi.infra.errors import ConfigError, DatasetError

DRAWS = [42, 400, 783, 1293, 4019]


# ------------------------------------------------------------ the packaged lists
def test_packaged_lists_are_the_standard_ones():
    folder = standard_subsets_folder()
    assert (folder / "LICENSE").is_file() and "MIT" in (folder / "LICENSE").read_text()
    full = set(read_id_file(folder / "voc" / "full" / "trainaug.txt"))
    for dataset, prefix, sizes in (("voc", "trainaug", {8: 1320, 64: 160, 128: 80}),
                                   ("ade20k", "training", {8: 2550, 64: 300, 128: 150})):
        for n, size in sizes.items():
            files = standard_subset_files(dataset, [1 / n])
            assert [f.name for f in files] == [f"{prefix}_{n}_{d}.txt" for d in DRAWS]
            draws = [read_id_file(f) for f in files]
            assert all(len(ids) == size for ids in draws)
            assert len({tuple(ids) for ids in draws}) == 5  # five different draws
            if dataset == "voc":
                assert all(set(ids) <= full for ids in draws)
            else:
                assert all(i.startswith("ADE_train_") for ids in draws for i in ids)
    assert len(read_id_file(folder / "voc" / "val.txt")) == 1449


def test_unknown_fraction_or_dataset_is_refused():
    with pytest.raises(ConfigError, match=r"fraction 1/4 \(it holds 1/8, 1/64, 1/128;"):
        standard_subset_files("voc", [1 / 4])
    with pytest.raises(ConfigError, match="no subset lists for dataset 'folder'.*lists exist for datasets: ade20k, voc"):
        standard_subset_files("folder", [1 / 8])
    with pytest.raises(ConfigError, match="drawn from its trainaug split, but data.train_split is 'train'"):
        plan_trials(load_config("demo", overrides=["fewshot.subsets=standard"]))
    with pytest.raises(ConfigError, match="neither 'random', 'standard', 'demo' nor a folder"):
        plan_trials(load_config(overrides=["fewshot.subsets=no/such/folder"]))


def test_standard_plan_is_one_trial_per_list_file():
    settings = load_config("fewshot_voc_vits16", overrides=["fewshot.subsets=standard", "bank.seed=3"])
    trials = plan_trials(settings)
    assert len(trials) == 10  # 1/128 and 1/64, five lists each
    assert [t.group for t in trials] == ["1/128"] * 5 + ["1/64"] * 5
    assert {t.seed for t in trials} == {3}  # the lists' draw numbers seed nothing
    assert [t.subset for t in trials[:5]] == [f"trainaug_128_{d}" for d in DRAWS]
    one = trial_settings(settings, trials[0])
    assert one["data"]["subset_file"] == str(trials[0].subset_file) and one["bank"]["seed"] == 3
    with pytest.raises(ConfigError, match="no subset files as well"):
        plan_trials(settings, subset_files=["a.txt"])


# ------------------------------------------------------------------ end to end
def write_list_set(folder, ids, per_file=2):
    """Five standard-format lists of `per_file` ids each: <folder>/voc/1_div_6/trainaug_6_<draw>.txt."""
    lists = folder / "voc" / "1_div_6"
    lists.mkdir(parents=True)
    chosen = {}
    for k, draw in enumerate(DRAWS):
        picked = [ids[(2 * k + j) % len(ids)] for j in range(per_file)]
        (lists / f"trainaug_6_{draw}.txt").write_text("".join(f"{i}\n" for i in picked))
        chosen[f"trainaug_6_{draw}"] = picked
    return chosen


def test_fewshot_with_standard_format_lists(demo_voc_root, tmp_path, capsys):
    train_ids = open_train_dataset(tiny_settings(demo_voc_root)).ids
    chosen = write_list_set(tmp_path / "lists", train_ids)
    out = tmp_path / "fewshot"
    settings = tiny_settings(demo_voc_root, eval={"max_images": 2},
                             bank={"aug_epochs": 1, "size": 2048},
                             fewshot={"fractions": [1 / 6], "subsets": str(tmp_path / "lists"),
                                      "features": ["embeddings"], "out": str(out)})
    report = run_fewshot(settings, progress=False)
    trials = report["trials"]
    assert [t["subset"] for t in trials] == [f"trainaug_6_{d}" for d in DRAWS]  # one trial per file
    assert {t["seed"] for t in trials} == {0} and all(t["images"] == 2 for t in trials)
    for planned, trial in zip(plan_trials(settings), trials):  # each trial uses exactly its list
        assert list(open_train_dataset(trial_settings(settings, planned)).ids) == chosen[trial["subset"]]
    assert len({t["bank"] for t in trials}) == 5
    (summary,) = report["summary"]
    mious = np.array([t["miou"] for t in trials])
    assert summary["subset"] == "1/6" and summary["trials"] == 5 and summary["images"] == 2
    assert summary["miou_mean"] == pytest.approx(mious.mean())
    assert summary["miou_std"] == pytest.approx(mious.std(ddof=1))
    saved = json.loads((out / "fewshot.json").read_text())
    assert saved["fewshot"]["subsets"] == str(tmp_path / "lists")

    # --seeds makes no sense there: each list is one trial.
    capsys.readouterr()
    assert main(["fewshot", "--config", "demo", "--root", str(demo_voc_root), "--subsets", "standard",
                 "--seeds", "0", "1"]) != 0
    assert "--seeds: with --subsets standard (or a folder) each list file is one trial" in capsys.readouterr().err
    assert main(["fewshot", "--config", "fewshot_voc_vits16", "--subsets", "standard", "--print-config"]) == 0
    assert "subsets: standard" in capsys.readouterr().out


# ------------------------------------------ fractions resolving to the same subsets
def test_fractions_giving_the_same_images_run_once(demo_voc_root, tmp_path, capsys):
    # 12 training images: 1/128 and 1/64 are both 1 image, 1/6 is 2.
    settings = tiny_settings(demo_voc_root, eval={"max_images": 1},
                             bank={"aug_epochs": 1, "size": 1024},
                             fewshot={"fractions": [1 / 128, 1 / 64, 1 / 6], "seeds": [0, 1],
                                      "features": ["embeddings"], "out": str(tmp_path / "fs")})
    trials = merge_equal_subsets(settings, plan_trials(settings))
    assert [(t.fraction, t.seed, t.group) for t in trials] == [
        (1 / 128, 0, "1/128, 1/64"), (1 / 128, 1, "1/128, 1/64"), (1 / 6, 0, "1/6"), (1 / 6, 1, "1/6")]
    warned = capsys.readouterr().err
    assert warned.count("warning") == 1 and "1/128, 1/64 all give 1 image;" in warned

    settings["fewshot"]["fractions"] = [1 / 128, 1 / 64]
    settings["fewshot"]["seeds"] = [0]
    report = run_fewshot(settings, progress=False)
    assert len(report["trials"]) == 1
    (summary,) = report["summary"]
    assert (summary["subset"], summary["images"], summary["bank_size"]) == ("1/128, 1/64", 1, 1024)
    banks = sorted(p.name for p in (tmp_path / "fs" / "banks").iterdir())
    assert banks == ["1-of-128"]  # built once
    assert capsys.readouterr().err.count("warning") == 1


# ------------------------------------------------------------ validation subset
def test_eval_on_a_validation_subset(demo_voc_root, fungi_bank, tmp_path):
    val_ids = open_val_dataset(tiny_settings(demo_voc_root)).ids
    listed = tmp_path / "val_subset.txt"
    listed.write_text(f"{val_ids[4]}\n{val_ids[1]}\n")
    settings = tiny_settings(demo_voc_root, data={"val_subset_file": str(listed)})
    assert list(open_val_dataset(settings).ids) == [val_ids[4], val_ids[1]]
    results = evaluate(fungi_bank / "support", load_config(base=settings), progress=False)
    assert results["images"] == 2
    listed.write_text("2012_999999\n")
    with pytest.raises(DatasetError, match=r"val_subset.txt: 1 ids are not in voc val"):
        open_val_dataset(settings)
