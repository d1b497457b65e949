"""Small hand-made datasets on disk for the segfungi.data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segfungi.data.labels import voc_palette


def random_pair(rng: np.random.Generator, height: int, width: int, num_classes: int,
                ignore_fraction: float = 0.0):
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = rng.integers(0, num_classes, size=(height, width), dtype=np.uint8)
    mask[rng.random((height, width)) < ignore_fraction] = 255
    return image, mask


def save_image(path: Path, image: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)
    return path


def save_palette_png(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask)
    image.putpalette(voc_palette().tobytes())
    image.save(path)
    return path


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def make_folder_dataset(root: Path, pairs: dict, classes=("a", "b", "c"), extra_class_lines=(),
                        splits: dict | None = None) -> Path:
    """images/<id>.png (lossless, so round trips are exact), masks/<id>.png, classes.txt."""
    for image_id, (image, mask) in pairs.items():
        save_image(root / "images" / f"{image_id}.png", image)
        save_image(root / "masks" / f"{image_id}.png", mask)
    write_lines(root / "classes.txt", [*extra_class_lines, *classes])
    for name, ids in (splits or {}).items():
        write_lines(root / "splits" / f"{name}.txt", ids)
    return root


def small_folder_dataset(root: Path, n: int = 3, seed: int = 0) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    pairs = {f"s{i}": random_pair(rng, 40, 48, 3, ignore_fraction=0.1) for i in range(n)}
    return make_folder_dataset(root, pairs), pairs


def make_voc_dataset(root: Path, pairs: dict, split: str = "train") -> Path:
    """VOCdevkit/VOC2012 with JPEG images and palette-PNG masks."""
    voc = root / "VOCdevkit" / "VOC2012"
    for image_id, (image, mask) in pairs.items():
        save_image(voc / "JPEGImages" / f"{image_id}.jpg", image, quality=95)
        save_palette_png(voc / "SegmentationClass" / f"{image_id}.png", mask)
    write_lines(voc / "ImageSets" / "Segmentation" / f"{split}.txt", list(pairs))
    return voc
