"""The Cityscapes layout: reading it, its refusals, its preset and its generated demo."""

import numpy as np
import pytest
from PIL import Image

from _data_fixtures import random_pair, save_image, write_lines
from segfungi.cli import main
from segfungi.config import load_config
from segfungi.data import CITYSCAPES_CLASSES, build_dataset, subset
from segfungi.data.demo import CITYSCAPES_TRAIN_IDS
from segfungi.data.demo_scenes import NUM_FOREGROUND, render_scene
from segfungi.infra.errors import DatasetError

# cityscapesscripts' labels.py, written out: (name, label id, trainId, colour) of the 19 classes.
OFFICIAL = (
    ("road", 7, 0, (128, 64, 128)), ("sidewalk", 8, 1, (244, 35, 232)), ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)), ("fence", 13, 4, (190, 153, 153)), ("pole", 17, 5, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)), ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)), ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)), ("rider", 25, 12, (255, 0, 0)), ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)), ("bus", 28, 15, (0, 60, 100)), ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)), ("bicycle", 33, 18, (119, 11, 32)),
)
TRAIN_ID_OF_LABEL_ID = {label_id: train_id for _, label_id, train_id, _ in OFFICIAL}


def make_cityscapes(root, frames, split="train", mask_kind="labelTrainIds", seed=0):
    """frames: "<city>_<seq>_<frame>" names; lossless PNG images, random 0..18 / 255 masks."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for name in frames:
        city = name.split("_")[0]
        image, mask = random_pair(rng, 40, 56, 19, ignore_fraction=0.1)
        save_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", image)
        save_image(root / "gtFine" / split / city / f"{name}_gtFine_{mask_kind}.png", mask)
        pairs[f"{city}/{name}"] = image, mask
    return pairs


FRAMES = ["bochum_000000_000313", "aachen_000001_000019", "aachen_000000_000019"]


def test_reads_the_layout_its_masks_ids_and_classes(tmp_path):
    pairs = make_cityscapes(tmp_path, FRAMES)
    make_cityscapes(tmp_path, ["frankfurt_000000_000294"], split="val")
    train = build_dataset("cityscapes", tmp_path, "train")
    assert train.ids == ("aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000313")
    assert train.classes == CITYSCAPES_CLASSES == tuple(name for name, _, _, _ in OFFICIAL)
    assert train.num_classes == 19 and train.name == "cityscapes" and train.split == "train"
    for name, _, train_id, colour in OFFICIAL:
        assert tuple(train.palette[train_id]) == colour, name
    assert tuple(train.palette[255]) == (0, 0, 0)
    for sample in train:
        image, mask = pairs[sample.id]
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.mask, mask)
    assert build_dataset("cityscapes", tmp_path, "val").ids == ("frankfurt/frankfurt_000000_000294",)


def test_reads_open_hummingbird_evals_cityscapes_folder_and_subset_files_of_its_ids(tmp_path):
    make_cityscapes(tmp_path / "cityscapes", FRAMES)
    train = build_dataset("cityscapes", tmp_path, "train")
    assert train.root == tmp_path / "cityscapes" and len(train) == 3
    ids_file = write_lines(tmp_path / "few.txt", ["bochum/bochum_000000_000313", "aachen/aachen_000000_000019"])
    assert subset(train, ids_file=ids_file).ids == ("bochum/bochum_000000_000313", "aachen/aachen_000000_000019")


def test_label_ids_only_names_the_folder_and_the_conversion_script(tmp_path):
    make_cityscapes(tmp_path, FRAMES, mask_kind="labelIds")
    masks = tmp_path / "gtFine" / "train"
    with pytest.raises(DatasetError) as caught:
        build_dataset("cityscapes", tmp_path, "train")
    message = str(caught.value)
    assert message.startswith(f"{masks}: ")
    assert "createTrainIdLabelImgs.py" in message and "pip install cityscapesscripts" in message
    assert f"CITYSCAPES_DATASET={tmp_path} csCreateTrainIdLabelImgs" in message
    assert "polygons.json" in message  # the script's input, missing here
    (masks / "aachen" / "aachen_000000_000019_gtFine_polygons.json").write_text("{}")
    with pytest.raises(DatasetError, match="csCreateTrainIdLabelImgs") as caught:
        build_dataset("cityscapes", tmp_path, "train")
    assert "lacks" not in str(caught.value)


def test_a_mask_value_outside_the_train_ids_is_refused_naming_the_file(tmp_path):
    pairs = make_cityscapes(tmp_path, FRAMES)
    bad = tmp_path / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelTrainIds.png"
    mask = pairs["aachen/aachen_000001_000019"][1].copy()
    mask[0, 0] = 19
    save_image(bad, mask)
    dataset = build_dataset("cityscapes", tmp_path, "train")
    with pytest.raises(DatasetError, match=rf"{bad}: mask values 19 are not labels here .*0\.\.18"):
        dataset["aachen/aachen_000001_000019"]
    skipping = build_dataset("cityscapes", tmp_path, "train", on_bad_sample="skip")
    assert "aachen/aachen_000001_000019" not in skipping.ids and len(skipping) == 2
    assert skipping.bad_samples[0][0] == "aachen/aachen_000001_000019" and str(bad) in skipping.bad_samples[0][1]


def test_a_missing_mask_is_a_bad_sample(tmp_path):
    make_cityscapes(tmp_path, FRAMES)
    missing = tmp_path / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_labelTrainIds.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"{missing}: mask file missing"):
        build_dataset("cityscapes", tmp_path, "train")
    assert len(build_dataset("cityscapes", tmp_path, "train", on_bad_sample="skip")) == 2


def test_test_split_unknown_splits_and_missing_folders_are_refused(tmp_path):
    make_cityscapes(tmp_path, FRAMES)
    with pytest.raises(DatasetError, match="test: its masks are not public.*val"):
        build_dataset("cityscapes", tmp_path, "test")
    with pytest.raises(DatasetError, match="no split 'training'.*train, val"):
        build_dataset("cityscapes", tmp_path, "training")
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'leftImg8bit' / 'val'}: folder missing"):
        build_dataset("cityscapes", tmp_path, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no Cityscapes folder here"):
        build_dataset("cityscapes", tmp_path / "empty", "train")


def test_preset():
    settings = load_config("cityscapes_vits16")
    assert settings["data"]["dataset"] == "cityscapes"
    assert (settings["data"]["train_split"], settings["data"]["val_split"], settings["data"]["image_size"]) == (
        "train", "val", 512)


def test_demo_data_round_trip(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--layout", "cityscapes", "--images", "7", "--val-images", "2",
                 "--seed", "3"]) == 0
    assert f"--dataset cityscapes --root {out}" in capsys.readouterr().out
    train, val = (build_dataset("cityscapes", out, split) for split in ("train", "val"))
    assert (len(train), len(val)) == (5, 2)
    assert {i.split("/")[0] for i in train.ids} == {"aachen", "bochum"}
    assert {i.split("/")[0] for i in val.ids} == {"frankfurt", "lindau"}
    ego_bands = 0
    for dataset, sample in [(train, s) for s in train] + [(val, s) for s in val]:
        index = int(sample.id.split("_")[1])  # the scene number
        scene = render_scene(np.random.default_rng([3, index]), first_style=1 + index % NUM_FOREGROUND)
        expected = np.asarray(CITYSCAPES_TRAIN_IDS)[scene.styles]
        ignored = sample.mask == 255
        if ignored.any():  # the ego-vehicle band: whole bottom rows
            ego_bands += 1
            top = np.flatnonzero(ignored.all(axis=1))[0]
            assert ignored[top:].all() and not ignored[:top].any()
        np.testing.assert_array_equal(sample.mask[~ignored], expected[~ignored])
        np.testing.assert_array_equal(sample.image[~ignored], scene.image[~ignored])  # PNG: lossless
        label_ids = np.asarray(Image.open(str(dataset.files(sample.id).mask).replace("labelTrainIds", "labelIds")))
        from_label_ids = np.vectorize(lambda v: TRAIN_ID_OF_LABEL_ID.get(v, 255))(label_ids)
        np.testing.assert_array_equal(from_label_ids, sample.mask)  # the official label id -> trainId map
        assert set(np.unique(label_ids[ignored])) <= {1}  # "ego vehicle"
    assert 0 < ego_bands < 7
