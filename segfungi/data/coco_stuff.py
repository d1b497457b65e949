"""COCO-Stuff: semantic masks drawn from COCO-format json annotations with pycocotools.

    <root>/images/<split>/<file_name>
    <root>/annotations/stuff_<split>.json and/or instances_<split>.json
                      (when neither exists: <split>.json)

The split is used as given, or with "2017" appended when only that exists
(train → train2017). When both stuff_ and instances_ files exist they are merged, which
gives the full COCO-Stuff label set (things + stuff).

Class ids: the categories of every json read, sorted by COCO category id, numbered
0..C-1. COCO-Stuff's category "other" (id 183: thing pixels in the stuff-only json) is
not a class; its pixels are ignore (255), like pixels no annotation covers.

Overlaps: annotations are painted one after another and later ones win: first the
stuff json's, then the instances json's (things lie on top of stuff), each in file
order. Crowd annotations are painted like the others: they are correct labels. An
image listed with no annotations is kept with an all-ignore mask. Image ids are the
file names without extension."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from segfungi.data.base import SampleFiles, SegDataset
from segfungi.data.idlists import check_unique
from segfungi.data.labels import IGNORE, distinct_palette
from segfungi.infra.errors import DatasetError

OTHER = "other"


def resolve_split(root: Path, split: str) -> str:
    for name in (split, f"{split}2017"):
        if (root / "images" / name).is_dir():
            return name
    raise DatasetError(f"{root / 'images' / split}: image folder missing")


def annotation_files(folder: Path, split: str) -> list[Path]:
    found = [folder / f"{prefix}{split}.json" for prefix in ("stuff_", "instances_")]
    found = [path for path in found if path.is_file()]
    if not found and (folder / f"{split}.json").is_file():
        found = [folder / f"{split}.json"]
    if not found:
        raise DatasetError(
            f"{folder}: no annotations for split {split} "
            f"(expected stuff_{split}.json, instances_{split}.json or {split}.json)"
        )
    return found


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read COCO json ({err})") from None
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(data, dict) or key not in data]
    if missing:
        raise DatasetError(f"{path}: not a COCO annotation file (missing {', '.join(missing)})")
    return data


def decode_rle(rle) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Boolean H×W region of a polygon list, an uncompressed or a compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    region = decode_rle(rle)
    if region.shape != (height, width):
        raise ValueError(f"RLE size {region.shape[1]}×{region.shape[0]} ≠ image {width}×{height}")
    return region.astype(bool)


class CocoMasks:
    """Paints each image's annotations, in order, into an ignore-filled mask."""

    def __init__(self, sizes: dict, annotations: dict, sources: dict):
        self.sizes = sizes  # id -> (height, width) from the json
        self.annotations = annotations  # id -> [(class id, segmentation, annotation id)]
        self.sources = sources  # id -> json file, for messages

    def __call__(self, files: SampleFiles, image_shape: tuple) -> np.ndarray:
        height, width = self.sizes[files.id]
        source = self.sources[files.id]
        if (height, width) != tuple(image_shape[:2]):
            raise DatasetError(f"{source}: image {files.id} is listed as {width}×{height} but "
                               f"{files.image} is {image_shape[1]}×{image_shape[0]}")
        mask = np.full((height, width), IGNORE, dtype=np.uint8)
        for class_id, segmentation, annotation_id in self.annotations.get(files.id, []):
            try:
                mask[decode_segmentation(segmentation, height, width)] = class_id
            except Exception as err:  # pycocotools raises bare Exceptions on bad input
                raise DatasetError(
                    f"{source}: annotation {annotation_id} of image {files.id} cannot be decoded ({err})"
                ) from None
        return mask


def merge_categories(jsons: list[tuple[Path, dict]]) -> tuple[list[str], dict[int, int]]:
    """(class names, COCO category id -> class id or 255)."""
    names: dict[int, str] = {}
    for _, data in jsons:
        for category in data["categories"]:
            names.setdefault(int(category["id"]), str(category["name"]))
    kept = sorted(cid for cid, name in names.items() if name != OTHER)
    class_of = {cid: index for index, cid in enumerate(kept)}
    class_of |= {cid: IGNORE for cid, name in names.items() if name == OTHER}
    return [names[cid] for cid in kept], class_of


def index_images(jsons: list[tuple[Path, dict]], folder: Path):
    """Sample files, json sizes and json sources by image id (file stem), plus the
    COCO image id → stem map; an image listed in several json files is taken once."""
    records = {}
    for path, data in jsons:
        for image in data["images"]:
            records.setdefault(image["id"], (path, image))
    stem_of = {coco_id: Path(image["file_name"]).stem for coco_id, (_, image) in records.items()}
    check_unique(list(stem_of.values()), folder)
    files = sorted((SampleFiles(stem_of[coco_id], folder / image["file_name"])
                    for coco_id, (_, image) in records.items()), key=lambda f: f.id)
    sizes = {stem_of[c]: (int(image["height"]), int(image["width"])) for c, (_, image) in records.items()}
    sources = {stem_of[c]: str(path) for c, (path, _) in records.items()}
    return files, sizes, sources, stem_of


def index_annotations(jsons: list[tuple[Path, dict]], stem_of: dict, class_of: dict) -> dict:
    """Image id → [(class id, segmentation, annotation id)] in painting order."""
    annotations: dict[str, list] = {}
    for path, data in jsons:
        for ann in data["annotations"]:
            if ann["image_id"] not in stem_of or ann["category_id"] not in class_of:
                raise DatasetError(f"{path}: annotation {ann.get('id')} refers to an unknown image or category")
            entry = (class_of[ann["category_id"]], ann["segmentation"], ann.get("id"))
            annotations.setdefault(stem_of[ann["image_id"]], []).append(entry)
    return annotations


def open_coco_stuff(root: Path, split: str, on_bad_sample: str = "error") -> SegDataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder missing")
    split = resolve_split(root, split)
    jsons = [(path, read_json(path)) for path in annotation_files(root / "annotations", split)]
    try:
        classes, class_of = merge_categories(jsons)
        files, sizes, sources, stem_of = index_images(jsons, root / "images" / split)
        annotations = index_annotations(jsons, stem_of, class_of)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetError(f"{root / 'annotations'}: malformed COCO json for {split} ({err!r})") from None
    if not 0 < len(classes) <= 255:
        raise DatasetError(f"{jsons[0][0]}: {len(classes)} categories; segfungi needs 1..255")
    return SegDataset(
        name="coco-stuff", root=root, split=split, classes=classes,
        palette=distinct_palette(len(classes)), files=files,
        read_mask=CocoMasks(sizes, annotations, sources),
        source=str(jsons[0][0]), on_bad_sample=on_bad_sample,
    )
