"""`segfungi demo` says what it ran and how to read it, for every dataset layout it accepts."""

import json

import pytest

from segfungi.cli import main
from segfungi.commands.demo import PRETRAINED_COMMAND


@pytest.mark.parametrize("dataset", ["ade20k", "voc", "cityscapes", "coco-stuff", "folder"])
def test_demo_runs_on_its_own_data_and_explains_a_random_init_run(dataset, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--dataset", dataset, "--train-images", "2", "--val-images", "1",
                 "--set", "sweep.sizes=[1024]", "--set", "sweep.features=[embeddings]", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "segfungi demo: backbone vit_tiny_patch16_224: random init (seed 0), no pretrained weights"
    assert f"2 train + 1 val generated images ({dataset} layout" in printed
    assert "1,024 patches" in printed
    assert "FUNGI's gain needs pretrained weights" in printed and PRETRAINED_COMMAND in printed
    rows = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [r["features"] for r in rows] == ["embeddings"] and rows[0]["images"] == 1
    assert (out / "sweep" / "miou_vs_bank_size.png").stat().st_size > 0


def test_the_command_it_suggests_parses():
    from segfungi.cli import build_parser

    args = build_parser().parse_args(PRETRAINED_COMMAND.split()[1:])
    assert args.pretrained and args.backbone == "vit_small_patch16_224.dino"
