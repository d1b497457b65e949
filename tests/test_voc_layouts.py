"""Pascal VOC in open-hummingbird-eval's VOCSegmentation layout, detected by the voc reader."""

import shutil

import numpy as np
import pytest

from segfungi.cli import main
from segfungi.data import build_dataset
from segfungi.data.demo import write_demo_dataset
from segfungi.infra.errors import DatasetError


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """The same 6 scenes (seed 3) in the VOCdevkit and the VOCSegmentation layouts."""
    base = tmp_path_factory.mktemp("voc-layouts")
    devkit = write_demo_dataset(base / "devkit", "voc", n_images=6, seed=3, n_val=2)
    reference = write_demo_dataset(base / "reference", "vocsegmentation", n_images=6, seed=3, n_val=2)
    return devkit, reference


def test_reference_layout_is_written_as_documented(roots):
    _, reference = roots
    folder = reference / "VOCSegmentation"
    for name in ("images", "SegmentationClass", "SegmentationClassAug", "sets"):
        assert (folder / name).is_dir(), name
    assert (folder / "sets" / "trainaug.txt").read_text().split() == [f"2012_{i:06d}" for i in range(4)]
    assert not (reference / "VOCdevkit").exists()


def test_reference_layout_reads_the_same_samples(roots):
    devkit, reference = roots
    for split in ("train", "val", "trainaug"):
        ours = build_dataset("voc", devkit, split)
        theirs = build_dataset("voc", reference, split)
        assert theirs.ids == ours.ids and theirs.classes == ours.classes
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a.image, b.image)
    # Masks: val from SegmentationClass (255 borders), in both layouts.
    for a, b in zip(build_dataset("voc", devkit, "val"), build_dataset("voc", reference, "val")):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (b.mask == 255).any()
    # train: the reference layout reads SegmentationClassAug (no borders), as its
    # implementation does; the VOCdevkit layout keeps the official masks for train.
    aug = [s.mask for s in build_dataset("voc", devkit, "trainaug")]
    train = [s.mask for s in build_dataset("voc", reference, "train")]
    for a, b in zip(aug, train):
        np.testing.assert_array_equal(a, b)
        assert not (b == 255).any()


def test_root_may_be_the_vocsegmentation_folder(roots):
    _, reference = roots
    inner = build_dataset("voc", reference / "VOCSegmentation", "val")
    assert inner.ids == build_dataset("voc", reference, "val").ids


def test_missing_parts_are_named(roots, tmp_path):
    _, reference = roots
    broken = tmp_path / "broken"
    shutil.copytree(reference, broken)
    shutil.rmtree(broken / "VOCSegmentation" / "sets")
    with pytest.raises(DatasetError, match=r"VOCSegmentation: incomplete VOCSegmentation layout, missing sets/"):
        build_dataset("voc", broken, "train")
    (broken / "VOCSegmentation" / "sets").mkdir()
    with pytest.raises(DatasetError, match=r"sets/train.txt: split file missing"):
        build_dataset("voc", broken, "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="VOCdevkit/VOC2012/JPEGImages.*VOCSegmentation/images"):
        build_dataset("voc", empty, "train")


def test_demo_data_command_writes_the_reference_layout(tmp_path, capsys):
    out = tmp_path / "hb"
    assert main(["demo-data", str(out), "--layout", "vocsegmentation", "--images", "4"]) == 0
    assert "--dataset voc " in capsys.readouterr().out
    assert len(build_dataset("voc", out, "val")) == 1
