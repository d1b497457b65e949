"""Pascal VOC 2012 (with the optional augmented set).

    <root>/VOCdevkit/VOC2012/   (root may also be the folder holding VOC2012, or VOC2012 itself)
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png      palette PNGs; the palette index is the class id, 255 = void
        SegmentationClassAug/<id>.png   augmented set: grayscale class-id PNGs
        ImageSets/Segmentation/{train,val,trainaug}.txt

`trainaug` may also be named `train_aug.txt`; its lines may be bare ids or the
distributed "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" pairs (only the id
is used). Mask folder, per id: trainaug prefers SegmentationClassAug and falls back to
SegmentationClass (the augmented set omits nothing it needs, but a partial copy
should still work); every other split prefers the official SegmentationClass (with
its 255 borders) and falls back to SegmentationClassAug. 21 classes, background = 0.
"""

from __future__ import annotations

from pathlib import Path

from segfungi.data.base import ClassIdMasks, SampleFiles, SegDataset
from segfungi.data.idlists import read_id_file
from segfungi.data.labels import IGNORE, VOC_CLASSES, voc_palette
from segfungi.errors import DatasetError

OFFICIAL, AUGMENTED = "SegmentationClass", "SegmentationClassAug"
TRAINAUG_NAMES = ("trainaug", "train_aug")


def find_voc_root(root: Path) -> Path:
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"{root}: no Pascal VOC 2012 folder here (looked for VOCdevkit/VOC2012/JPEGImages, "
        "VOC2012/JPEGImages and JPEGImages)"
    )


def split_file(voc: Path, split: str) -> Path:
    folder = voc / "ImageSets" / "Segmentation"
    names = TRAINAUG_NAMES if split in TRAINAUG_NAMES else (split,)
    for name in names:
        if (folder / f"{name}.txt").is_file():
            return folder / f"{name}.txt"
    available = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
    raise DatasetError(
        f"{folder / (names[0] + '.txt')}: split file missing (splits here: {', '.join(available) or 'none'})"
    )


def mask_folders(voc: Path, split: str) -> list[Path]:
    order = (AUGMENTED, OFFICIAL) if split in TRAINAUG_NAMES else (OFFICIAL, AUGMENTED)
    folders = [voc / name for name in order if (voc / name).is_dir()]
    if not folders:
        raise DatasetError(f"{voc}: no mask folder ({OFFICIAL}/ or {AUGMENTED}/)")
    return folders


def mask_path(folders: list[Path], image_id: str) -> Path:
    """The first folder that has this id's mask; else the preferred (missing) path."""
    for folder in folders:
        if (folder / f"{image_id}.png").is_file():
            return folder / f"{image_id}.png"
    return folders[0] / f"{image_id}.png"


def open_voc(root: Path, split: str, on_bad_sample: str = "error") -> SegDataset:
    voc = find_voc_root(Path(root))
    ids_file = split_file(voc, split)
    ids = read_id_file(ids_file)
    folders = mask_folders(voc, split)
    files = [SampleFiles(i, voc / "JPEGImages" / f"{i}.jpg", mask_path(folders, i)) for i in ids]
    mapping = {k: k for k in range(len(VOC_CLASSES))} | {IGNORE: IGNORE}
    return SegDataset(
        name="voc", root=voc, split=split, classes=VOC_CLASSES, palette=voc_palette(),
        files=files, read_mask=ClassIdMasks(mapping, "VOC: 0..20 = classes, 255 = void"),
        source=str(ids_file), on_bad_sample=on_bad_sample,
    )
