"""A newcomer's first hour, round two (issue 22): each item as a user meets it, through the CLI.

1 a tagged backbone without weights, 3 predict and bad images, 4 demo reruns, 5 offline
hub, 6 few-shot list folders, 7 bank info on damaged banks, 10 small things.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segfungi.cli import main

REPO = Path(__file__).resolve().parents[1]
# 6 training images at 64² (4×4 patches), one augmented image per shard: seconds to build.
TINY = ["--config", "demo", "--quiet", "--set", "data.image_size=64", "--set", "bank.shard_images=1",
        "--set", "bank.batch_size=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from segfungi.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("first-hour") / "data", layout="voc", n_images=8, seed=0,
                              n_val=2)


@pytest.fixture(scope="module")
def bank(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "emb"
    assert main(["build-bank", *TINY, "--root", str(root), "--bank-size", "48", "--features", "embeddings",
                 "--out", str(out)]) == 0
    return out


def cli(*argv, env=None, cwd=None):
    """`python -m segfungi ARGV` in a fresh interpreter, as a user types it."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.run([sys.executable, "-m", "segfungi", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


RANDOM_LINE = "backbone vit_tiny_patch16_224: random init (seed 0), no pretrained weights"


# ------------------------------------------------------ 1: a forgotten --weights
def test_a_forgotten_weights_flag_is_refused_before_anything_is_written(root, tmp_path, capsys):
    out = tmp_path / "X"
    code = main(["build-bank", "--root", str(root), "--bank-size", "1024", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "vit_small_patch16_224.dino" in err and "'dino'" in err and "random init" in err
    for fix in ("--weights FILE", "--pretrained", "--random-init"):
        assert fix in err
    assert not out.exists()


def test_random_init_of_a_pretrained_name_needs_random_init(root, tmp_path, capsys):
    # The demo preset without its `random_init: true`: what a user's own preset looks like.
    preset = tmp_path / "mine.yaml"
    preset.write_text((REPO / "configs" / "demo.yaml").read_text().replace("  random_init: true\n", ""))
    argv = ["build-bank", *TINY, "--config", str(preset), "--root", str(root), "--bank-size", "48",
            "--features", "embeddings"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "vit_tiny_patch16_224: names pretrained weights (timm tag 'augreg_in21k_ft_in1k')" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # --random-init allows it, and the first line says what ran.
    assert main([*argv, "--out", str(tmp_path / "b"), "--random-init"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == RANDOM_LINE


def test_a_key_with_a_null_default_takes_null_after_a_preset():
    from segfungi.config import load_config

    assert load_config("demo", ["backbone.random_init=null"])["backbone"]["random_init"] is None
    assert load_config("voc_vits16", ["data.image_size=null"])["data"]["image_size"] is None


def test_pretrained_tags_come_from_timm():
    from segfungi.families import check_weights_source, pretrained_tag
    from segfungi.infra.errors import ConfigError

    assert pretrained_tag("vit_small_patch16_224.dino") == "dino"
    assert pretrained_tag("vit_small_patch14_dinov2") == "lvd142m"  # the architecture's default tag
    assert pretrained_tag("vit_small_patch16_18x2_224") is None  # timm has no weights for it
    check_weights_source("vit_small_patch16_18x2_224", weights=None, pretrained=False, random_init=None)
    with pytest.raises(ConfigError, match="--random-init"):
        check_weights_source("vit_small_patch14_dinov2", weights=None, pretrained=False, random_init=None)
    with pytest.raises(ConfigError, match="random_init is false"):
        check_weights_source("vit_small_patch16_18x2_224", weights=None, pretrained=False, random_init=False)


def test_every_command_that_prints_results_starts_with_the_weights_source(root, bank, tmp_path, capsys):
    images = root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    commands = [
        ["eval", "--bank", bank, "--root", root, "--quiet"],
        ["predict", "--bank", bank, images, "--out", tmp_path / "pred", "--quiet", "--no-overlay"],
        ["sweep", *TINY, "--root", root, "--sizes", "48", "--features", "embeddings", "--out", tmp_path / "sweep"],
        ["fewshot", *TINY, "--root", root, "--fractions", "0.5", "--seeds", "0", "--features", "embeddings",
         "--bank-size", "48", "--out", tmp_path / "fewshot"],
    ]
    for argv in commands:
        assert main(list(map(str, argv))) == 0, argv
        assert capsys.readouterr().out.splitlines()[0] == RANDOM_LINE, argv[0]


# ------------------------------------------------------ 5: offline hub
@pytest.mark.parametrize("offline", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["offline-mode", "hub-unreachable"])
def test_a_preset_without_weights_offline_fails_at_once_with_the_fixes(root, tmp_path, offline):
    # No download: HF_HUB_OFFLINE forbids any request; 127.0.0.1:9 refuses the connection.
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), **offline}
    done = cli("build-bank", "--config", "voc_vits16", "--root", root, "--set", "data.train_split=train",
               "--out", tmp_path / "X", "--quiet", env=env)
    assert done.returncode == 2
    assert "Retrying" not in done.stderr  # one attempt, not huggingface_hub's ten
    error = done.stderr.strip().splitlines()[-1]
    assert "timm/vit_small_patch16_224.dino" in error and str(tmp_path / "empty-cache") in error
    for fix in ("--weights FILE", "--random-init", "HF_HUB_CACHE"):
        assert fix in error
    assert not (tmp_path / "X").exists()


# ------------------------------------------------------ 7: bank info on damaged banks
def copy_bank(bank, to):
    import shutil

    shutil.copytree(bank, to)
    return to


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_bank_info_says_damaged_for_a_deleted_or_truncated_shard(bank, tmp_path, capsys, damage):
    broken = copy_bank(bank, tmp_path / "broken")
    shard = broken / "shards" / "00002"
    if damage == "delete":
        import shutil

        shutil.rmtree(shard)
    else:
        features = shard / "features.npy"
        features.write_bytes(features.read_bytes()[:-8])
    assert main(["bank", "info", str(broken)]) == 0
    out = capsys.readouterr().out
    assert f"status:     damaged: run `segfungi bank verify {broken}`" in out and "complete" not in out
    assert "problem:" in out and "00002" in out
    assert main(["bank", "info", str(bank)]) == 0
    assert "status:     complete, 6 of 6 shards done" in capsys.readouterr().out


# ------------------------------------------------------ 3: predict and bad images
def test_predict_skips_an_unreadable_image_in_a_folder_and_lists_it(root, bank, tmp_path, capsys):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sorted((root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copy(source, folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")

    assert main(["predict", "--bank", str(bank), str(folder), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "2 masks written" in captured.out and "1 unreadable image(s) skipped" in captured.out
    assert "skipped 1 unreadable image(s):" in captured.err and str(folder / "broken.jpg") in captured.err
    assert sorted(p.name for p in (tmp_path / "a" / "masks").iterdir()) == ["2012_000000.png", "2012_000001.png"]

    assert main(["predict", "--bank", str(bank), str(folder), "--out", str(tmp_path / "b"), "--quiet",
                 "--on-bad-sample", "error"]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    # An image named directly stops the run unless skip is asked for.
    assert main(["predict", "--bank", str(bank), str(folder / "broken.jpg"), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    assert "broken.jpg: cannot read image" in capsys.readouterr().err
    assert main(["predict", "--bank", str(bank), str(folder / "broken.jpg"), "--out", str(tmp_path / "d"),
                 "--quiet", "--on-bad-sample", "skip"]) == 0
    assert "0 masks written" in capsys.readouterr().out


# ------------------------------------------------------ 4: demo reruns
def test_a_demo_rerun_on_other_data_writes_nothing_and_a_same_rerun_says_it_reuses(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--set", "sweep.sizes=[64]", "--set", "sweep.features=[embeddings]",
            "--set", "data.image_size=64", "--quiet"]
    assert main([*argv, "--train-images", "4", "--val-images", "2"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    assert main([*argv, "--train-images", "8", "--val-images", "4"]) == 2
    err = capsys.readouterr().err
    assert "4 train + 2 val images" in err and "8 train + 4 val images" in err and "nothing was written" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    assert main([*argv, "--train-images", "4", "--val-images", "2"]) == 0
    assert f"reusing the embeddings bank in {out / 'sweep' / 'banks' / 'embeddings-64'}" in capsys.readouterr().err


# ------------------------------------------------------ 6: few-shot list folders
@pytest.fixture(scope="module")
def root32(tmp_path_factory):
    """Generated VOC data with the 32 training images the demo lists draw from."""
    assert main(["demo-data", str(tmp_path_factory.mktemp("fs") / "data"), "--images", "34",
                 "--val-images", "2"]) == 0
    return tmp_path_factory.getbasetemp() / "fs0" / "data"


FEWSHOT = ["fewshot", *TINY, "--features", "embeddings", "--bank-size", "64", "--aug-epochs", "1"]


def test_demo_lists_run_end_to_end_on_generated_data(root32, tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--images", "34", "--val-images", "2"]) == 0
    assert "--subsets demo" in capsys.readouterr().out  # demo-data says how to try it
    out = tmp_path / "fs"
    assert main([*FEWSHOT, "--root", str(root32), "--subsets", "demo", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "hold 1/8, 1/16: running them all" in captured.err  # the preset's 1/128, 1/64 are not there
    table = captured.out[captured.out.index("few-shot mIoU"):]
    assert [line.split()[:3] for line in table.splitlines()[2:4]] == [["1/8", "4", "5"], ["1/16", "2", "5"]]
    # --fractions picks among the folder's fractions, and must be one of them.
    assert main([*FEWSHOT, "--root", str(root32), "--subsets", "demo", "--fractions", "0.125",
                 "--out", str(out)]) == 0
    assert "1/16" not in capsys.readouterr().out.split("few-shot mIoU")[1]
    assert main([*FEWSHOT, "--root", str(root32), "--subsets", "demo", "--fractions", "0.0078125",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds no lists for fraction 1/128 (it holds 1/8, 1/16;" in err


def test_a_list_folder_missing_its_dataset_level_says_so(root, tmp_path, capsys):
    mine = tmp_path / "mysub"
    (mine / "1_div_8").mkdir(parents=True)
    (mine / "1_div_8" / "a.txt").write_text("2012_000000\n")
    assert main([*FEWSHOT, "--root", str(root), "--subsets", str(mine), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{mine}: holds 1_div_<N> folders directly" in err and f"move them into {mine / 'voc'}/" in err
    # Laid out right, the folder's own fraction is the default.
    (mine / "voc").mkdir()
    (mine / "1_div_8").rename(mine / "voc" / "1_div_8")
    assert main([*FEWSHOT, "--root", str(root), "--subsets", str(mine), "--out", str(tmp_path / "o")]) == 0
    assert "1/8" in capsys.readouterr().out.split("few-shot mIoU")[1]


def test_fewshot_help_shows_the_list_folder_layout(capsys):
    with pytest.raises(SystemExit):
        main(["fewshot", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "DIR/<dataset>/1_div_<N>/*.txt" in help_text and "demo:" in help_text


def test_readme_names_the_shipped_fractions_alike():
    readme = (REPO / "README.md").read_text()
    # Every mention of the standard lists says what they hold (1/8, 1/64, 1/128) and what runs by default.
    assert "1/128, 1/64 lists, 5 each" not in readme
    assert readme.count("1/8, 1/64, 1/128") >= 2


# ------------------------------------------------------ 10: small things
def test_progress_off_a_terminal_is_plain_lines(root, bank, tmp_path):
    tiny = [a for a in TINY if a != "--quiet"]  # progress on, into a pipe
    built = cli("build-bank", *tiny, "--root", root, "--bank-size", "48", "--features", "embeddings",
                "--out", tmp_path / "b")
    evaluated = cli("eval", "--bank", bank, "--root", root)
    for done, desc in ((built, "embeddings bank b"), (evaluated, f"eval {bank.name}")):
        assert done.returncode == 0, done.stderr
        assert "\r" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith(desc)]
        assert lines[0].startswith(f"{desc}: 0/") and "(100%)" in lines[-1], done.stderr


def test_classify_presets_are_not_offered_to_segmentation_commands(root, tmp_path, capsys):
    assert main(["build-bank", "--config", "no_such_preset", "--root", str(root)]) == 2
    listed = capsys.readouterr().err
    assert "voc_vits16" in listed and "classify_" not in listed and "defaults" not in listed
    assert main(["build-bank", "--config", "classify_image", "--root", str(root), "--out", str(tmp_path / "b")]) == 2
    assert "a `segfungi classify` preset" in capsys.readouterr().err
    assert main(["classify", "image", "--config", "no_such_preset"]) == 2
    assert "presets: classify_audio, classify_image, classify_text" in capsys.readouterr().err


def test_sweep_csv_names_its_fraction_columns(root, tmp_path, capsys):
    import csv

    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "--root", str(root), "--sizes", "48", "--features", "embeddings",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    with open(out / "sweep.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert "miou" not in row and 0 <= float(row["miou_fraction"]) <= 1
    assert 0 <= float(row["pixel_accuracy_fraction"]) <= 1
    shown = float(table.split("mIoU (%) by bank size")[1].splitlines()[2].split()[-1])  # the table's percent
    assert shown == pytest.approx(100 * float(row["miou_fraction"]), abs=0.05)


def test_classify_max_train_takes_exactly_that_many_and_starts_with_the_weights(tmp_path, capsys):
    pytest.importorskip("sklearn")
    code = main(["classify", "image", "--dataset", "digits", "--max-train", "11", "--max-test", "13",
                 "--losses", "kl", "--no-cache", "--quiet", "--set", "backbone.name=vit_tiny_patch16_224",
                 "--out", str(tmp_path / "c.json")])
    captured = capsys.readouterr()
    assert code == 0
    # Per-class rounding gave 10 of 11 (and --max-train 200 gave 199).
    assert "image: 11 train / 13 test samples, 10 classes" in captured.err
    assert captured.out.splitlines()[0] == RANDOM_LINE
    assert main(["classify", "image", "--dataset", "digits", "--max-train", "5", "--losses", "kl", "--no-cache",
                 "--quiet"]) == 2
    assert "run.max_train 5: fewer than the 10 classes" in capsys.readouterr().err


def test_stratified_sample_is_exact_and_proportional():
    import numpy as np

    from segfungi.classify.datasets import stratified_sample

    labels = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])  # digits' classes
    for n in (11, 199, 200, 1000):
        kept = stratified_sample(labels, n, seed=0)
        assert len(kept) == n == len(set(kept.tolist()))
        share = n * np.bincount(labels) / len(labels)
        assert (np.abs(np.bincount(labels[kept], minlength=10) - share) < 1).all()
    assert (stratified_sample(labels, 200, 3) == stratified_sample(labels, 200, 3)).all()


def test_a_broken_torch_torchvision_pair_is_one_line_naming_the_fix(root, tmp_path):
    # A torchvision that fails to load as one built for another torch does.
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"}
    done = cli("build-bank", *TINY, "--root", root, "--bank-size", "48", "--out", tmp_path / "X", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    from importlib import metadata

    from segfungi.infra.install_check import matching_torchvision

    torch_version = metadata.version("torch")
    assert f"torch {torch_version}" in line and "and torchvision" in line and "operator torchvision::nms does not exist" in line
    assert f"pip install 'torchvision=={matching_torchvision(torch_version)}'" in line
    assert matching_torchvision("2.14.1+cpu") == "0.29.*" and matching_torchvision("2.2.0") == "0.17.*"
    # Commands that load no model do not need torchvision.
    assert cli("demo-data", tmp_path / "d", "--images", "4", env=env).returncode == 0


# ------------------------------------------------------ 11: the protocol table
def test_protocol_table_lists_the_references_known_input_differences():
    from segfungi.families import load_backbone

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Protocol"):readme.index("## Using it")]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    normalisation, evaluation = rows["input normalisation"], rows["evaluation images"]
    assert "(0.229, 0.224, **0.255**)" in normalisation and "typo for 0.225" in normalisation
    assert "known difference" in normalisation and "known difference" in evaluation
    assert "with antialiasing" in evaluation and "0.002" in table
    # segfungi itself does not copy the typo.
    small = dict(depth=1, embed_dim=32, num_heads=2)
    for name in ("vit_small_patch16_224.dino", "vit_small_patch14_dinov2"):
        assert load_backbone(name, model_kwargs=small, img_size=56 if "14" in name else 32).std == (0.229, 0.224, 0.225)
