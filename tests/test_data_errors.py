"""Every broken-data case: with on_bad_sample="error" a DatasetError naming the file,
with "skip" the sample is dropped and reported; structural problems are always fatal."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from _data_fixtures import (
    make_voc_dataset,
    random_pair,
    save_image,
    save_palette_png,
    small_folder_dataset,
    write_lines,
)
from segfungi.data import build_dataset
from segfungi.infra.errors import DatasetError


def _read_all(dataset):
    return [dataset[i] for i in range(len(dataset))]


# Each breaker damages sample "s1" of a 3-sample folder dataset and returns the path
# the error message must name.
def missing_image(root):
    (root / "images/s1.png").unlink()
    write_lines(root / "splits/some.txt", ["s0", "s1", "s2"])
    return root / "images"


def missing_mask(root):
    (root / "masks/s1.png").unlink()
    return root / "masks/s1.png"


def empty_image(root):
    (root / "images/s1.png").write_bytes(b"")
    return root / "images/s1.png"


def empty_mask(root):
    (root / "masks/s1.png").write_bytes(b"")
    return root / "masks/s1.png"


def truncated_image(root):
    path = root / "images/s1.png"
    big = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = save_image(path, big).read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def garbage_image(root):
    (root / "images/s1.png").write_bytes(b"\x89PNG but not really" * 20)
    return root / "images/s1.png"


def mask_wrong_size(root):
    save_image(root / "masks/s1.png", np.zeros((40, 47), np.uint8))
    return root / "masks/s1.png"


def mask_value_out_of_range(root):
    mask = np.zeros((40, 48), np.uint8)
    mask[3, 3] = 3  # 3 classes: 0..2 and 255 are fine
    save_image(root / "masks/s1.png", mask)
    return root / "masks/s1.png"


def rgb_mask(root):
    save_image(root / "masks/s1.png", np.zeros((40, 48, 3), np.uint8))
    return root / "masks/s1.png"


def tiny_image(root):
    save_image(root / "images/s1.png", np.zeros((15, 48, 3), np.uint8))
    save_image(root / "masks/s1.png", np.zeros((15, 48), np.uint8))
    return root / "images/s1.png"


def float_image(root):
    (root / "images/s1.png").unlink()
    Image.fromarray(np.zeros((40, 48), np.float32)).save(root / "images/s1.tiff", format="TIFF")
    (root / "images/s1.tiff").rename(root / "images/s1.png")  # a TIFF behind a .png name
    return root / "images/s1.png"


BREAKERS = [missing_image, missing_mask, empty_image, empty_mask, truncated_image, garbage_image,
            mask_wrong_size, mask_value_out_of_range, rgb_mask, tiny_image, float_image]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_bad_sample_raises_naming_the_file(tmp_path, breaker):
    root, _ = small_folder_dataset(tmp_path)
    named = breaker(root)
    split = "some" if breaker is missing_image else "all"
    with pytest.raises(DatasetError, match=re.escape(str(named))):
        _read_all(build_dataset("folder", root, split))


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_bad_sample_is_skipped_and_reported(tmp_path, breaker):
    root, pairs = small_folder_dataset(tmp_path)
    named = breaker(root)
    split = "some" if breaker is missing_image else "all"
    dataset = build_dataset("folder", root, split, on_bad_sample="skip")
    assert dataset.ids == ("s0", "s2")
    assert len(dataset.bad_samples) == 1
    bad_id, reason = dataset.bad_samples[0]
    assert bad_id == "s1" and str(named) in reason
    for sample in dataset:  # the good ones are intact
        np.testing.assert_array_equal(sample.mask, pairs[sample.id][1])


def test_rgb_converted_voc_mask_and_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    pairs = {f"2007_{i:06d}": random_pair(rng, 64, 80, 21) for i in range(3)}
    voc = make_voc_dataset(tmp_path, pairs)
    mask_path = voc / "SegmentationClass/2007_000001.png"
    Image.open(mask_path).convert("RGB").save(mask_path)
    jpeg = voc / "JPEGImages/2007_000002.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    with pytest.raises(DatasetError, match=re.escape(str(mask_path)) + ".*RGB"):
        _read_all(build_dataset("voc", tmp_path, "train"))
    dataset = build_dataset("voc", tmp_path, "train", on_bad_sample="skip")
    assert dataset.ids == ("2007_000000",)
    assert [bad_id for bad_id, _ in dataset.bad_samples] == ["2007_000001", "2007_000002"]
    assert str(jpeg) in dataset.bad_samples[1][1]


def test_voc_id_listed_but_missing_is_found_when_opening(tmp_path):
    rng = np.random.default_rng(0)
    voc = make_voc_dataset(tmp_path, {"a": random_pair(rng, 20, 20, 21)})
    write_lines(voc / "ImageSets/Segmentation/train.txt", ["a", "ghost"])
    with pytest.raises(DatasetError, match=re.escape(str(voc / "JPEGImages/ghost.jpg"))):
        build_dataset("voc", tmp_path, "train")  # before any sample is read


@pytest.mark.parametrize("on_bad_sample", ["error", "skip"])
def test_structural_problems_are_always_fatal(tmp_path, on_bad_sample):
    rng = np.random.default_rng(0)
    voc = make_voc_dataset(tmp_path, {"a": random_pair(rng, 20, 20, 21), "b": random_pair(rng, 20, 20, 21)})
    lists = voc / "ImageSets/Segmentation"

    def fails(split, path):
        with pytest.raises(DatasetError, match=re.escape(str(path))):
            build_dataset("voc", tmp_path, split, on_bad_sample=on_bad_sample)

    fails("val", lists / "val.txt")  # missing split file
    write_lines(lists / "empty.txt", ["", "  "])
    fails("empty", lists / "empty.txt")
    write_lines(lists / "dup.txt", ["a", "b", "a"])
    fails("dup", lists / "dup.txt")
    write_lines(lists / "gone.txt", ["x", "y"])  # every listed sample bad
    fails("gone", lists / "gone.txt")


@pytest.mark.parametrize("on_bad_sample", ["error", "skip"])
def test_folder_structure_is_fatal(tmp_path, on_bad_sample):
    root, _ = small_folder_dataset(tmp_path)
    save_image(root / "images/s0.jpg", np.zeros((20, 20, 3), np.uint8))  # s0.png and s0.jpg
    with pytest.raises(DatasetError, match="duplicate.*s0"):
        build_dataset("folder", root, "all", on_bad_sample=on_bad_sample)
    (root / "images/s0.jpg").unlink()
    (root / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match=re.escape(str(root / "classes.txt"))):
        build_dataset("folder", root, "all", on_bad_sample=on_bad_sample)
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(root / "classes.txt"))):
        build_dataset("folder", root, "all", on_bad_sample=on_bad_sample)


def test_coco_bad_json_and_size_mismatch(tmp_path):
    (tmp_path / "annotations").mkdir()
    save_image(tmp_path / "images/train2017/1.jpg", np.zeros((20, 30, 3), np.uint8))
    save_image(tmp_path / "images/train2017/2.jpg", np.zeros((20, 30, 3), np.uint8))
    path = tmp_path / "annotations/instances_train2017.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        build_dataset("coco-stuff", tmp_path, "train")
    images = [{"id": 1, "file_name": "1.jpg", "height": 20, "width": 30},
              {"id": 2, "file_name": "2.jpg", "height": 25, "width": 30}]
    annotations = [{"id": 9, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]}]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*image 2"):
        _read_all(build_dataset("coco-stuff", tmp_path, "train"))
    dataset = build_dataset("coco-stuff", tmp_path, "train", on_bad_sample="skip")
    assert dataset.ids == ("1",) and dataset.bad_samples[0][0] == "2"
    annotations[0]["category_id"] = 5
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(DatasetError, match="unknown image or category"):
        build_dataset("coco-stuff", tmp_path, "train", on_bad_sample="skip")


def test_zero_byte_voc_mask_in_skip_mode_never_returns_a_pair(tmp_path):
    rng = np.random.default_rng(0)
    voc = make_voc_dataset(tmp_path, {"a": random_pair(rng, 20, 20, 21), "b": random_pair(rng, 20, 20, 21)})
    save_palette_png(voc / "SegmentationClass/b.png", np.zeros((20, 20), np.uint8))
    dataset = build_dataset("voc", tmp_path, "train", on_bad_sample="skip")
    (voc / "SegmentationClass/b.png").write_bytes(b"")  # goes bad after opening
    with pytest.raises(DatasetError, match="b.png"):
        dataset[1]
