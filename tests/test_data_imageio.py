"""Reading images and masks: conversions that are allowed, files that are refused."""

import re

import numpy as np
import pytest
from PIL import Image

from _data_fixtures import save_image, save_palette_png
from segfungi.data.imageio import read_class_mask, read_image
from segfungi.infra.errors import DatasetError


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)


def raises_naming(path):
    return pytest.raises(DatasetError, match=re.escape(str(path)))


def test_rgb_png_reads_exactly(tmp_path, rgb):
    path = save_image(tmp_path / "a.png", rgb)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 24, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA"])
def test_other_modes_become_rgb(tmp_path, rgb, mode):
    source = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    source.save(path) if mode != "CMYK" else source.save(path, quality=100)
    out = read_image(path)
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    if mode in ("L", "LA"):
        gray = np.asarray(source.convert("L"))
        np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "RGBA":  # alpha dropped, colours kept
        np.testing.assert_array_equal(out, rgb)
    if mode == "CMYK":
        assert np.abs(out.astype(int) - rgb).mean() < 8


def test_sixteen_bit_grayscale_is_scaled(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 65280]], dtype=np.uint16)
    values = np.tile(values, (8, 8))
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    out = read_image(path)
    assert out.shape == (*values.shape, 3)
    np.testing.assert_array_equal(out[:2, :3, 0], [[0, 1, 255], [128, 4, 254]])


def test_float_image_is_refused(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.ones((20, 20), dtype=np.float32)).save(path)
    with raises_naming(path):
        read_image(path)


def test_missing_empty_garbage_truncated(tmp_path, rgb):
    with raises_naming(tmp_path / "none.jpg"):
        read_image(tmp_path / "none.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        read_image(empty)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all" * 10)
    with raises_naming(garbage):
        read_image(garbage)
    for name in ("cut.jpg", "cut.png"):
        big = np.random.default_rng(1).integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
        data = save_image(tmp_path / name, big).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with raises_naming(tmp_path / name):
            read_image(tmp_path / name)


def test_palette_mask_reads_indices(tmp_path):
    mask = np.array([[0, 1, 255], [20, 15, 0]], dtype=np.uint8)
    path = save_palette_png(tmp_path / "m.png", mask)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_class_mask(path), mask)


def test_rgb_mask_is_refused(tmp_path):
    mask = np.array([[0, 1], [255, 15]], dtype=np.uint8)
    rgb_path = tmp_path / "rgb.png"
    Image.open(save_palette_png(tmp_path / "m.png", mask)).convert("RGB").save(rgb_path)
    with pytest.raises(DatasetError, match=re.escape(str(rgb_path)) + ".*RGB"):
        read_class_mask(rgb_path)


def test_jpeg_mask_is_refused(tmp_path):
    path = save_image(tmp_path / "m.jpg", np.zeros((20, 20), np.uint8))
    with pytest.raises(DatasetError, match="lossless"):
        read_class_mask(path)


def test_sixteen_bit_mask(tmp_path):
    small = np.array([[0, 5], [255, 3]], dtype=np.uint16)
    Image.fromarray(small).save(tmp_path / "ok.png")
    np.testing.assert_array_equal(read_class_mask(tmp_path / "ok.png"), small.astype(np.uint8))
    Image.fromarray(small * 300).save(tmp_path / "big.png")
    with raises_naming(tmp_path / "big.png"):
        read_class_mask(tmp_path / "big.png")
