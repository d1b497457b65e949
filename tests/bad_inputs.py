"""A corpus of broken inputs: datasets, configs, banks and checkpoints, each written
by one generator function so the tests (test_bad_inputs.py, test_safe_loading.py,
test_fuzz.py) can rebuild any case from scratch.

Dataset cases damage one sample of a small, otherwise valid dataset in a real on-disk
layout (VOC: JPEG images + palette PNG masks; folder: PNG images + class-id PNG masks)
and say what segfungi must do with it:

  * "sample": a per-sample problem. With --on-bad-sample error the command stops with
    a one-line DatasetError naming `path`; with skip the sample `bad_id` is dropped,
    reported, and the bank is built from the rest.
  * "fatal": a problem of the dataset as a whole (split file, ids): an error naming
    `path` whatever the policy.
  * "ok": unusual but valid input (CMYK, 16-bit, non-UTF-8 file names) that is read
    and converted as documented in segfungi/data/imageio.py; nothing is skipped.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from _data_fixtures import make_voc_dataset, random_pair, save_image, save_palette_png, write_lines

VOC_IDS = ("2007_000000", "2007_000001", "2007_000002")
BAD = "2007_000001"  # the sample each VOC case damages
HEIGHT, WIDTH = 40, 48


@dataclass
class BadCase:
    name: str
    layout: str  # voc | folder
    split: str
    effect: str  # sample | fatal | ok
    path: str | None = None  # the file the message must name
    bad_id: str | None = None
    check: Callable[[Path], None] | None = None  # for "ok": asserts the read result


# ------------------------------------------------------------------ raw files
def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None,
              palette: bytes | None = None) -> bytes:
    """A PNG written by hand, so any header (16-bit RGB, absurd sizes) can be made."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    if palette is not None:
        out += chunk(b"PLTE", palette)
    if rows is not None:
        out += chunk(b"IDAT", zlib.compress(rows))
    return out + chunk(b"IEND", b"")


def rgb48_png(image16: np.ndarray) -> bytes:
    """16 bits per channel RGB (PIL cannot write these itself)."""
    height, width, _ = image16.shape
    rows = b"".join(b"\x00" + image16[y].astype(">u2").tobytes() for y in range(height))
    return png_bytes(width, height, 16, 2, rows)


def valid_png(seed: int = 0, mode: str = "RGB", size=(HEIGHT, WIDTH)) -> bytes:
    rng = np.random.default_rng(seed)
    shape = size + ((3,) if mode == "RGB" else ())
    array = rng.integers(0, 256 if mode == "RGB" else 3, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def valid_jpeg(seed: int = 0, size=(HEIGHT, WIDTH)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=size + (3,), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# -------------------------------------------------------------- base datasets
def voc_base(root: Path) -> Path:
    """VOCdevkit/VOC2012 with three 48×40 samples; returns the VOC2012 folder."""
    rng = np.random.default_rng(0)
    pairs = {i: random_pair(rng, HEIGHT, WIDTH, 21, ignore_fraction=0.05) for i in VOC_IDS}
    return make_voc_dataset(root, pairs, split="train")


def folder_base(root: Path, names=("s0", "s1", "s2")) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        image, mask = random_pair(rng, HEIGHT, WIDTH, 3)
        save_image(root / "images" / f"{name}.png", image)
        save_image(root / "masks" / f"{name}.png", mask)
    write_lines(root / "classes.txt", ["a", "b", "c"])
    return root


# --------------------------------------------------------------------- cases
def truncated_jpeg(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "JPEGImages" / f"{BAD}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return BadCase("truncated_jpeg", "voc", "train", "sample", str(path), BAD)


def zero_byte_image(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "JPEGImages" / f"{BAD}.jpg"
    path.write_bytes(b"")
    return BadCase("zero_byte_image", "voc", "train", "sample", str(path), BAD)


def zero_byte_mask(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "SegmentationClass" / f"{BAD}.png"
    path.write_bytes(b"")
    return BadCase("zero_byte_mask", "voc", "train", "sample", str(path), BAD)


def mask_wrong_size(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "SegmentationClass" / f"{BAD}.png"
    save_palette_png(path, np.zeros((HEIGHT, WIDTH - 1), np.uint8))
    return BadCase("mask_wrong_size", "voc", "train", "sample", str(path), BAD)


def palette_mask_unknown_values(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "SegmentationClass" / f"{BAD}.png"
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[5:9, 5:9] = 37  # VOC has 0..20 and 255
    save_palette_png(path, mask)
    return BadCase("palette_mask_unknown_values", "voc", "train", "sample", str(path), BAD)


def rgb_rendered_mask(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "SegmentationClass" / f"{BAD}.png"
    Image.open(path).convert("RGB").save(path)
    return BadCase("rgb_rendered_mask", "voc", "train", "sample", str(path), BAD)


def sixteen_bit_mask_out_of_range(root: Path) -> BadCase:
    base = folder_base(root)
    path = base / "masks" / "s1.png"
    mask = np.zeros((HEIGHT, WIDTH), np.uint16)
    mask[0, 0] = 300
    Image.fromarray(mask).save(path)
    return BadCase("sixteen_bit_mask_out_of_range", "folder", "all", "sample", str(path), "s1")


def image_smaller_than_a_patch(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "JPEGImages" / f"{BAD}.jpg"
    save_image(path, np.zeros((12, 40, 3), np.uint8), quality=95)
    save_palette_png(voc / "SegmentationClass" / f"{BAD}.png", np.zeros((12, 40), np.uint8))
    return BadCase("image_smaller_than_a_patch", "voc", "train", "sample", str(path), BAD)


def decompression_bomb(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "JPEGImages" / f"{BAD}.jpg"  # content decides the format, not the name
    path.write_bytes(png_bytes(60000, 60000, 8, 2))  # 3.6 gigapixels claimed, no data
    return BadCase("decompression_bomb", "voc", "train", "sample", str(path), BAD)


def not_an_image(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "JPEGImages" / f"{BAD}.jpg"
    path.write_bytes(b"<html>404 not found</html>\n" * 10)
    return BadCase("not_an_image", "voc", "train", "sample", str(path), BAD)


def empty_split_file(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text("\n  \n")
    return BadCase("empty_split_file", "voc", "train", "fatal", str(path))


def duplicate_ids(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "ImageSets" / "Segmentation" / "train.txt"
    write_lines(path, [*VOC_IDS, VOC_IDS[0]])
    return BadCase("duplicate_ids", "voc", "train", "fatal", str(path))


def split_file_not_utf8(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "ImageSets" / "Segmentation" / "train.txt"
    path.write_bytes(b"2007_000000\n2007_\xff\xfe01\n")
    return BadCase("split_file_not_utf8", "voc", "train", "fatal", str(path))


def classes_file_not_utf8(root: Path) -> BadCase:
    base = folder_base(root)
    path = base / "classes.txt"
    path.write_bytes(b"a\nb\xe9\nc\n")
    return BadCase("classes_file_not_utf8", "folder", "all", "fatal", str(path))


def every_sample_bad(root: Path) -> BadCase:
    voc = voc_base(root)
    for image_id in VOC_IDS:
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    return BadCase("every_sample_bad", "voc", "train", "fatal", str(voc / "ImageSets" / "Segmentation" / "train.txt"))


def cmyk_image(root: Path) -> BadCase:
    voc = voc_base(root)
    path = voc / "JPEGImages" / f"{BAD}.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)

    def check(dataset_root: Path) -> None:
        from segfungi.data import build_dataset

        image = build_dataset("voc", dataset_root, "train")[BAD].image
        expected = np.asarray(Image.open(path).convert("RGB"))
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(image, expected)

    return BadCase("cmyk_image", "voc", "train", "ok", str(path), check=check)


def sixteen_bit_gray_image(root: Path) -> BadCase:
    base = folder_base(root)
    path = base / "images" / "s1.png"
    gray = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) * 34).astype(np.uint16)
    Image.fromarray(gray).save(path)

    def check(dataset_root: Path) -> None:
        from segfungi.data import build_dataset

        image = build_dataset("folder", dataset_root, "all")["s1"].image
        expected = ((gray.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        np.testing.assert_array_equal(image, np.repeat(expected[:, :, None], 3, axis=2))

    return BadCase("sixteen_bit_gray_image", "folder", "all", "ok", str(path), check=check)


def sixteen_bit_rgb_image(root: Path) -> BadCase:
    base = folder_base(root)
    path = base / "images" / "s1.png"
    rgb16 = np.random.default_rng(3).integers(0, 65536, size=(HEIGHT, WIDTH, 3)).astype(np.uint16)
    path.write_bytes(rgb48_png(rgb16))

    def check(dataset_root: Path) -> None:
        from segfungi.data import build_dataset

        image = build_dataset("folder", dataset_root, "all")["s1"].image
        # PIL reads 48-bit RGB as 8-bit RGB by keeping each value's high byte.
        np.testing.assert_array_equal(image, (rgb16 >> 8).astype(np.uint8))

    return BadCase("sixteen_bit_rgb_image", "folder", "all", "ok", str(path), check=check)


def non_utf8_file_names(root: Path) -> BadCase:
    """A sample whose image and mask names are Latin-1 bytes (valid on Linux)."""
    base = folder_base(root, names=("s0", "s2"))
    image, mask = random_pair(np.random.default_rng(9), HEIGHT, WIDTH, 3)
    name = b"caf\xe9"
    for folder, array in ((b"images", image), (b"masks", mask)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        with open(os.path.join(os.fsencode(base), folder, name + b".png"), "wb") as f:
            f.write(buffer.getvalue())
    image_id = os.fsdecode(name)

    def check(dataset_root: Path) -> None:
        from segfungi.data import build_dataset

        dataset = build_dataset("folder", dataset_root, "all")
        assert image_id in dataset.ids
        np.testing.assert_array_equal(dataset[image_id].image, image)
        np.testing.assert_array_equal(dataset[image_id].mask, mask)

    return BadCase("non_utf8_file_names", "folder", "all", "ok", None, image_id, check=check)


def non_utf8_name_truncated(root: Path) -> BadCase:
    """A broken sample whose name is not UTF-8: the message must still name it."""
    case = non_utf8_file_names(root)
    path = os.path.join(os.fsencode(root), b"images", b"caf\xe9.png")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return BadCase("non_utf8_name_truncated", "folder", "all", "sample", os.fsdecode(path), case.bad_id)


DATASET_CASES = [
    truncated_jpeg, zero_byte_image, zero_byte_mask, mask_wrong_size, palette_mask_unknown_values,
    rgb_rendered_mask, sixteen_bit_mask_out_of_range, image_smaller_than_a_patch, decompression_bomb,
    not_an_image, empty_split_file, duplicate_ids, split_file_not_utf8, classes_file_not_utf8, every_sample_bad,
    cmyk_image,
    sixteen_bit_gray_image, sixteen_bit_rgb_image, non_utf8_file_names, non_utf8_name_truncated,
]


# ------------------------------------------------------------------- configs
# (name, YAML text or bytes, the words the ConfigError must contain)
CONFIG_CASES = [
    ("unknown_key", "bank:\n  sise: 3\n", ["bank.sise", "allowed here", "size"]),
    ("unknown_section", "banks:\n  size: 3\n", ["banks", "allowed here", "bank"]),
    ("wrong_type", "eval:\n  k: many\n", ["eval.k", "must be int"]),
    ("bool_for_int", "bank:\n  size: true\n", ["bank.size", "must be int"]),
    ("section_not_mapping", "data: voc\n", ["'data' must be a mapping"]),
    ("not_a_mapping", "- just\n- a list\n", ["expected a mapping"]),
    ("yaml_syntax", "bank: {size: 3\n", ["not valid YAML"]),
    ("not_utf8", b"bank:\n  out: caf\xe9\n", ["not valid UTF-8"]),
    ("python_tag", "bank: !!python/object/apply:os.system ['true']\n", ["not valid YAML"]),
    ("negative_size", "bank:\n  size: -5\n", ["bank.size", "positive"]),
    ("zero_shard_images", "bank:\n  shard_images: 0\n", ["bank.shard_images", "positive"]),
    ("nan_temperature", "eval:\n  temperature: .nan\n", ["eval.temperature"]),
    ("bad_policy", "data:\n  on_bad_sample: ignore\n", ["data.on_bad_sample", "error", "skip"]),
    ("root_not_a_path", "data:\n  root: [1, 2]\n", ["data.root", "str"]),
]


# --------------------------------------------------------------------- banks
def evil_pickle_payload(marker: Path):
    """An object whose unpickling would create `marker` (what a malicious file does)."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Evil()


def write_evil_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Checkpoint files that would run `touch marker` if they were unpickled."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    evil = evil_pickle_payload(marker)
    files = {}
    files["zip_state_dict"] = folder / "zip.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 192)}, "args": evil}, files["zip_state_dict"])
    files["legacy_format"] = folder / "legacy.pth"
    torch.save({"cls_token": evil}, files["legacy_format"], _use_new_zipfile_serialization=False)
    files["raw_pickle"] = folder / "raw.pth"
    files["raw_pickle"].write_bytes(pickle.dumps({"state_dict": evil}))
    files["pickle_named_safetensors"] = folder / "model.safetensors"
    files["pickle_named_safetensors"].write_bytes(pickle.dumps(evil))
    return files
