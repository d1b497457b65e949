from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segfungi.bank import SUPPORT_DIR, MemoryBank
from segfungi.cli import main
from segfungi.inference.predict import list_images, make_segmenter, predict_images, predict_to_folder, to_rgb
from segfungi.infra.errors import DatasetError


@pytest.fixture(scope="module")
def bank(fungi_bank) -> Path:
    """The embeddings bank of the suite's shared FUNGI bank (conftest): nothing to build."""
    return fungi_bank / SUPPORT_DIR


@pytest.fixture(scope="module")
def segmenter(bank):
    """Loading the backbone and index costs seconds: tests that can, share one."""
    return make_segmenter(bank)


def odd_images(rng) -> dict[str, np.ndarray]:
    return {
        "photo": rng.integers(0, 256, (333, 500, 3), dtype=np.uint8),
        "gray": rng.integers(0, 256, (257, 123), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (100, 640, 4), dtype=np.uint8),
    }


def test_to_rgb_converts_gray_and_rgba():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (to_rgb(gray) == gray[..., None]).all() and to_rgb(gray).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 9
    assert to_rgb(rgba).shape == (3, 4, 3) and (to_rgb(rgba)[..., 0] == 9).all()
    with pytest.raises(DatasetError, match="uint8"):
        to_rgb(np.zeros((3, 4), np.float32))


def test_predict_images_from_arrays_keep_each_size(bank, segmenter):
    images = odd_images(np.random.default_rng(0))
    masks = predict_images(segmenter, images.values())
    num_classes = len(MemoryBank(bank).classes)
    for picture, mask in zip(images.values(), masks):
        assert mask.shape == picture.shape[:2] and mask.dtype == np.uint8
        assert mask.max() < num_classes


def test_predict_command_writes_palette_masks_and_overlays(bank, segmenter, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    arrays = odd_images(np.random.default_rng(1))
    Image.fromarray(arrays["photo"]).save(folder / "photo.jpg", quality=90)
    Image.fromarray(arrays["gray"]).save(folder / "gray.png")  # mode L
    Image.fromarray(arrays["rgba"]).save(folder / "rgba.png")  # mode RGBA
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    assert main(["predict", "--bank", str(bank), str(folder), "--out", str(out), "--quiet"]) == 0

    palette = MemoryBank(bank).palette
    for path in sorted(folder.glob("*.*g")):
        array = arrays[path.stem]
        with Image.open(out / "masks" / f"{path.stem}.png") as mask:
            assert mask.mode == "P" and mask.size == (array.shape[1], array.shape[0])
            stored = np.asarray(mask.getpalette()[: palette.size], dtype=np.uint8).reshape(-1, 3)
            assert (stored == palette[: len(stored)]).all()
        with Image.open(out / "overlays" / f"{path.stem}.png") as drawn:
            assert drawn.mode == "RGB" and drawn.size[1] >= array.shape[0] and drawn.size[0] > array.shape[1]
    assert not (out / "masks" / "notes.png").exists()
    # The file holds the ids the Python API returns for the same image.
    with Image.open(out / "masks" / "rgba.png") as mask:
        assert (np.asarray(mask) == predict_images(segmenter, [folder / "rgba.png"])[0]).all()


def test_predict_to_folder_single_file_without_overlay(segmenter, tmp_path):
    path = tmp_path / "one.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(path)
    records = predict_to_folder(segmenter, [path], tmp_path / "out", overlays=False, progress=False)
    assert records[0]["height"] == 40 and records[0]["width"] == 50 and "overlay" not in records[0]
    assert not (tmp_path / "out" / "overlays").exists()


def test_inputs_that_cannot_work_are_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="same name"):
        list_images([tmp_path / "a.jpg", tmp_path / "sub"])
    with pytest.raises(DatasetError, match="no such image"):
        list_images([tmp_path / "missing.jpg"])
    with pytest.raises(DatasetError, match="no images found"):
        list_images([tmp_path / "empty"])


def test_unreadable_image_is_named(segmenter, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        predict_to_folder(segmenter, [broken], tmp_path / "out", progress=False)


def test_missing_input_is_a_one_line_cli_error(bank, tmp_path, capsys):
    code = main(["predict", "--bank", str(bank), str(tmp_path / "gone.jpg"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "gone.jpg" in err and "Traceback" not in err
