"""Pascal VOC 2012 (with the optional augmented set), in either of two layouts.

The VOCdevkit layout (the official archive):

    <root>/VOCdevkit/VOC2012/   (root may also be the folder holding VOC2012, or VOC2012 itself)
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png      palette PNGs; the palette index is the class id, 255 = void
        SegmentationClassAug/<id>.png   augmented set: grayscale class-id PNGs
        ImageSets/Segmentation/{train,val,trainaug}.txt

The VOCSegmentation layout (open-hummingbird-eval's archives):

    <root>/VOCSegmentation/     (root may also be VOCSegmentation itself)
        images/<id>.jpg
        SegmentationClass/<id>.png, SegmentationClassAug/<id>.png   as above
        sets/{train,val,trainaug}.txt

The layout is detected from the folders present. `trainaug` may also be named
`train_aug.txt`; its lines may be bare ids or the distributed
"/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" pairs (only the id is used).
Mask folder, per id: in the VOCdevkit layout trainaug prefers SegmentationClassAug and
every other split the official SegmentationClass (with its 255 borders); in the
VOCSegmentation layout train and trainaug prefer SegmentationClassAug, as the
reference implementation reads them. Either way a split falls back to the other
folder for ids its preferred one lacks. 21 classes, background = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segfungi.data.base import ClassIdMasks, SampleFiles, SegDataset
from segfungi.data.idlists import read_id_file
from segfungi.data.labels import IGNORE, VOC_CLASSES, voc_palette
from segfungi.infra.errors import DatasetError

OFFICIAL, AUGMENTED = "SegmentationClass", "SegmentationClassAug"
TRAINAUG_NAMES = ("trainaug", "train_aug")
REFERENCE_FOLDER = "VOCSegmentation"


@dataclass(frozen=True)
class VocLayout:
    """Where one copy of VOC keeps its images, masks and split files."""

    folder: Path  # holds the mask folders
    images: Path
    splits: Path
    aug_first: tuple[str, ...]  # splits whose masks come from SegmentationClassAug first


DEVKIT_AUG_FIRST = TRAINAUG_NAMES
REFERENCE_AUG_FIRST = TRAINAUG_NAMES + ("train",)


def find_voc_root(root: Path) -> VocLayout:
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return VocLayout(candidate, candidate / "JPEGImages", candidate / "ImageSets" / "Segmentation",
                             DEVKIT_AUG_FIRST)
    for candidate in (root / REFERENCE_FOLDER, root):
        if candidate.name == REFERENCE_FOLDER or (candidate / "images").is_dir() or (candidate / "sets").is_dir():
            missing = [f"{name}/" for name in ("images", "sets") if not (candidate / name).is_dir()]
            if not missing:
                return VocLayout(candidate, candidate / "images", candidate / "sets", REFERENCE_AUG_FIRST)
            if candidate.is_dir():
                raise DatasetError(
                    f"{candidate}: incomplete VOCSegmentation layout, missing {' and '.join(missing)} "
                    "(expected images/, SegmentationClass/ or SegmentationClassAug/, and sets/<split>.txt)"
                )
    raise DatasetError(
        f"{root}: no Pascal VOC 2012 folder here (looked for VOCdevkit/VOC2012/JPEGImages, "
        "VOC2012/JPEGImages and JPEGImages, and for the VOCSegmentation layout: "
        "VOCSegmentation/images and VOCSegmentation/sets)"
    )


def split_file(layout: VocLayout, split: str) -> Path:
    folder = layout.splits
    names = TRAINAUG_NAMES if split in TRAINAUG_NAMES else (split,)
    for name in names:
        if (folder / f"{name}.txt").is_file():
            return folder / f"{name}.txt"
    available = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
    raise DatasetError(
        f"{folder / (names[0] + '.txt')}: split file missing (splits here: {', '.join(available) or 'none'})"
    )


def mask_folders(layout: VocLayout, split: str) -> list[Path]:
    order = (AUGMENTED, OFFICIAL) if split in layout.aug_first else (OFFICIAL, AUGMENTED)
    folders = [layout.folder / name for name in order if (layout.folder / name).is_dir()]
    if not folders:
        raise DatasetError(f"{layout.folder}: no mask folder ({OFFICIAL}/ or {AUGMENTED}/)")
    return folders


def mask_path(folders: list[Path], image_id: str) -> Path:
    """The first folder that has this id's mask; else the preferred (missing) path."""
    for folder in folders:
        if (folder / f"{image_id}.png").is_file():
            return folder / f"{image_id}.png"
    return folders[0] / f"{image_id}.png"


def open_voc(root: Path, split: str, on_bad_sample: str = "error") -> SegDataset:
    layout = find_voc_root(Path(root))
    voc = layout.folder
    ids_file = split_file(layout, split)
    ids = read_id_file(ids_file)
    folders = mask_folders(layout, split)
    files = [SampleFiles(i, layout.images / f"{i}.jpg", mask_path(folders, i)) for i in ids]
    mapping = {k: k for k in range(len(VOC_CLASSES))} | {IGNORE: IGNORE}
    return SegDataset(
        name="voc", root=voc, split=split, classes=VOC_CLASSES, palette=voc_palette(),
        files=files, read_mask=ClassIdMasks(mapping, "VOC: 0..20 = classes, 255 = void"),
        source=str(ids_file), on_bad_sample=on_bad_sample,
    )
