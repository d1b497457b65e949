"""ADE20K SceneParsing (ADEChallengeData2016).

    <root>/ADEChallengeData2016/   (or root itself)
        images/{training,validation}/<id>.jpg
        annotations/{training,validation}/<id>.png   on disk: 0 = "other", 1..150 = classes

Splits: "training" / "train" and "validation" / "val"; the ids are the sorted image
file names (ADE20K has no split files). On reading, 0 becomes 255 (ignore) and k
becomes k-1, so the 150 classes are 0..149."""

from __future__ import annotations

from pathlib import Path

from segfungi.data.base import ClassIdMasks, SampleFiles, SegDataset
from segfungi.data.labels import ADE20K_CLASSES, IGNORE, distinct_palette
from segfungi.infra.errors import DatasetError

SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}


def find_ade_root(root: Path) -> Path:
    for candidate in (root / "ADEChallengeData2016", root):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise DatasetError(
        f"{root}: no ADE20K folder here (looked for ADEChallengeData2016/images + annotations "
        "and images + annotations)"
    )


def open_ade20k(root: Path, split: str, on_bad_sample: str = "error") -> SegDataset:
    if split not in SPLITS:
        raise DatasetError(f"ADE20K has no split {split!r} (use one of {', '.join(SPLITS)})")
    ade = find_ade_root(Path(root))
    folder = SPLITS[split]
    images = ade / "images" / folder
    if not images.is_dir():
        raise DatasetError(f"{images}: image folder missing")
    image_paths = sorted(p for p in images.iterdir() if p.suffix.lower() == ".jpg")
    if not image_paths:
        raise DatasetError(f"{images}: no .jpg images")
    annotations = ade / "annotations" / folder
    if not annotations.is_dir():
        raise DatasetError(f"{annotations}: annotation folder missing")
    files = [SampleFiles(p.stem, p, annotations / f"{p.stem}.png") for p in image_paths]
    mapping = {0: IGNORE} | {k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)}
    return SegDataset(
        name="ade20k", root=ade, split=folder, classes=ADE20K_CLASSES,
        palette=distinct_palette(len(ADE20K_CLASSES)), files=files,
        read_mask=ClassIdMasks(mapping, "ADE20K: 0 = other, 1..150 = classes"),
        source=str(images), on_bad_sample=on_bad_sample,
    )
