"""Cityscapes (fine annotations), read as its 19 training classes.

    <root>/                      (or <root>/cityscapes/, open-hummingbird-eval's layout)
        leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

Splits: "train" and "val". The test split's masks are not public, so it is refused.
Ids are "<city>/<city>_<seq>_<frame>", in sorted order.

Masks are the `labelTrainIds` images: 0..18 are the classes (road … bicycle, the order
of cityscapesscripts' labels.py) and 255 is ignore. The official download holds
`labelIds` images (34 label ids, most of them not evaluated) and polygon json files;
cityscapesscripts' createTrainIdLabelImgs.py writes the `labelTrainIds` images from the
json. A gtFine folder with `labelIds` images only is refused with that fix, rather than
mapped here, so that every tool reading the folder sees the same trainIds.
"""

from __future__ import annotations

from pathlib import Path

from segfungi.data.base import ClassIdMasks, SampleFiles, SegDataset
from segfungi.data.labels import CITYSCAPES_CLASSES, IGNORE, cityscapes_palette
from segfungi.infra.errors import DatasetError

SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
POLYGONS_SUFFIX = "_gtFine_polygons.json"
REFERENCE_FOLDER = "cityscapes"
# The Cityscapes label id of each trainId 0..18 (labels.py); every other label id is ignored.
LABEL_ID_OF_TRAIN_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CONVERT_COMMAND = "pip install cityscapesscripts; CITYSCAPES_DATASET={root} csCreateTrainIdLabelImgs"


def find_cityscapes_root(root: Path) -> Path:
    for candidate in (root, root / REFERENCE_FOLDER):
        if (candidate / "leftImg8bit").is_dir() and (candidate / "gtFine").is_dir():
            return candidate
    raise DatasetError(
        f"{root}: no Cityscapes folder here (looked for leftImg8bit/ and gtFine/ in it and in "
        f"{REFERENCE_FOLDER}/)"
    )


def check_train_id_masks(root: Path, masks: Path) -> None:
    """Refuse a gtFine split folder without any labelTrainIds image, saying how to make them."""
    if any(masks.glob(f"*/*{MASK_SUFFIX}")):
        return
    if not any(masks.glob(f"*/*{LABEL_IDS_SUFFIX}")):
        raise DatasetError(f"{masks}: no <city>/*{MASK_SUFFIX} masks")
    fix = CONVERT_COMMAND.format(root=root)
    if not any(masks.glob(f"*/*{POLYGONS_SUFFIX}")):
        fix += (f" (it converts the *{POLYGONS_SUFFIX} files of the official gtFine download, "
                "which this folder lacks: unpack gtFine_trainvaltest.zip here again)")
    raise DatasetError(
        f"{masks}: holds *{LABEL_IDS_SUFFIX} masks (34 Cityscapes label ids) but no *{MASK_SUFFIX} "
        "(the 19 training classes, 255 = ignore) that segfungi reads; write them with cityscapesscripts' "
        f"createTrainIdLabelImgs.py: {fix}"
    )


def sample_files(image: Path, masks: Path) -> SampleFiles:
    city, stem = image.parent.name, image.name.removesuffix(IMAGE_SUFFIX)
    return SampleFiles(f"{city}/{stem}", image, masks / city / f"{stem}{MASK_SUFFIX}")


def open_cityscapes(root: Path, split: str, on_bad_sample: str = "error") -> SegDataset:
    if split == "test":
        raise DatasetError("Cityscapes test: its masks are not public (results on test go through the "
                           "benchmark server); evaluate on val")
    if split not in SPLITS:
        raise DatasetError(f"Cityscapes has no split {split!r} (use one of {', '.join(SPLITS)})")
    city_root = find_cityscapes_root(Path(root))
    images, masks = city_root / "leftImg8bit" / split, city_root / "gtFine" / split
    for folder in (images, masks):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder missing")
    image_paths = sorted(images.glob(f"*/*{IMAGE_SUFFIX}"))
    if not image_paths:
        raise DatasetError(f"{images}: no <city>/*{IMAGE_SUFFIX} images")
    check_train_id_masks(city_root, masks)
    mapping = {k: k for k in range(len(CITYSCAPES_CLASSES))} | {IGNORE: IGNORE}
    return SegDataset(
        name="cityscapes", root=city_root, split=split, classes=CITYSCAPES_CLASSES,
        palette=cityscapes_palette(), files=[sample_files(p, masks) for p in image_paths],
        read_mask=ClassIdMasks(mapping, "Cityscapes labelTrainIds: 0..18 = classes, 255 = ignore"),
        source=str(images), on_bad_sample=on_bad_sample,
    )
