"""A small generated dataset in a real on-disk layout and real file formats (JPEG
images, PNG for Cityscapes; PNG / COCO-json labels), for demos and tests.

Classes: background plus five foreground classes, each a distinctive colour and
texture (see demo_scenes.py). Each layout keeps its own label space:
  * voc:  background + aeroplane, car, cat, dog, person (VOC ids 0, 1, 7, 8, 12, 15)
          in the 21-class VOC space. SegmentationClass: palette PNGs with a 255 border
          band (≈4 px) along every object outline, like real VOC; SegmentationClassAug
          (train ids, grayscale, no borders); train.txt, val.txt and trainaug.txt (in
          the distributed "/JPEGImages/… /SegmentationClassAug/…" line format).
  * vocsegmentation: the same data in open-hummingbird-eval's layout,
          VOCSegmentation/{images, SegmentationClass, SegmentationClassAug, sets}, with
          bare ids in sets/{train,val,trainaug}.txt (read with dataset voc).
  * ade20k: background = wall, objects = person, car, tree, painting, lamp (on-disk
          1, 13, 21, 5, 23, 37) in the 150-class space; about half of the images get an
          "other" blob (on-disk 0, i.e. ignore). images/ and annotations/ per split.
  * cityscapes: background = road, objects = person, car, building, vegetation, traffic
          sign (trainIds 0, 11, 13, 2, 8, 7); PNG images in leftImg8bit/<split>/<city>/ and,
          in gtFine/<split>/<city>/, labelTrainIds masks and the matching labelIds masks
          (Cityscapes' 34 label ids). About half of the images get an "ego vehicle" band
          along the bottom (label id 1, trainId 255 = ignore), as real frames do.
  * folder: classes.txt with the six style names, masks/ with class ids 0..5,
          splits/train.txt and splits/val.txt.
  * coco-stuff: images/{train,val}2017, annotations/stuff_*.json (background
          "wall-other" and COCO-Stuff's "other" over thing pixels, compressed RLE) and
          instances_*.json (objects as polygons, in painting order).
Image sides are 300..520 px and never square. Everything depends only on `seed` (image
i is drawn from the generator seeded with (seed, i), so it does not depend on the
number of images). Both train and val splits are written; use split names train / val.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from segfungi.data.cityscapes import IMAGE_SUFFIX, LABEL_ID_OF_TRAIN_ID, LABEL_IDS_SUFFIX, MASK_SUFFIX
from segfungi.data.demo_scenes import NUM_FOREGROUND, STYLES, Scene, render_scene
from segfungi.data.labels import IGNORE, voc_palette
from segfungi.infra.errors import DatasetError

LAYOUTS = ("voc", "ade20k", "folder", "coco-stuff", "vocsegmentation", "cityscapes")
DATASET_OF_LAYOUT = {"vocsegmentation": "voc"}  # the dataset name that reads a layout, where it differs
MARKER = ".segfungi-demo.json"
# Top-level entries a demo writes; only these are replaced when a demo folder is rewritten.
_WRITTEN = ("VOCdevkit", "VOCSegmentation", "ADEChallengeData2016", "images", "masks", "splits", "annotations",
            "leftImg8bit", "gtFine", "classes.txt", MARKER)

VOC_IDS = (0, 1, 7, 8, 12, 15)  # background, aeroplane, car, cat, dog, person
ADE_IDS = (1, 13, 21, 5, 23, 37)  # wall, person, car, tree, painting, lamp (on disk, 1-based)
CITYSCAPES_TRAIN_IDS = (0, 11, 13, 2, 8, 7)  # road, person, car, building, vegetation, traffic sign
CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
EGO_VEHICLE_LABEL_ID = 1  # Cityscapes' "ego vehicle": trainId 255
COCO_THINGS = ((5, "airplane"), (3, "car"), (17, "cat"), (18, "dog"), (1, "person"))
COCO_BACKGROUND, COCO_OTHER = (173, "wall-other"), (183, "other")
VOC_BORDER_PX = 5  # kernel of the morphological gradient that marks VOC's void band


# ------------------------------------------------------------------ file writing
def save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=92)


def save_png(path: Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask)
    if palette is not None:
        image.putpalette(palette.tobytes())  # mode L -> P: the values stay the class ids
    image.save(path, format="PNG")


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def voc_void_border(labels: np.ndarray) -> np.ndarray:
    """True on a band along every boundary between two labels."""
    kernel = np.ones((VOC_BORDER_PX, VOC_BORDER_PX), np.uint8)
    return cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, kernel) > 0


# ---------------------------------------------------------------------- layouts
def write_voc(out: Path, scenes: list[Scene], splits: dict[str, list[int]], reference: bool = False) -> None:
    """VOCdevkit layout, or (`reference`) open-hummingbird-eval's VOCSegmentation layout."""
    if reference:
        voc = out / "VOCSegmentation"
        images, lists = voc / "images", voc / "sets"
    else:
        voc = out / "VOCdevkit" / "VOC2012"
        images, lists = voc / "JPEGImages", voc / "ImageSets" / "Segmentation"
    ids = [f"2012_{i:06d}" for i in range(len(scenes))]
    lut = np.asarray(VOC_IDS, dtype=np.uint8)
    for image_id, scene in zip(ids, scenes):
        labels = lut[scene.styles]
        save_jpeg(images / f"{image_id}.jpg", scene.image)
        official = np.where(voc_void_border(labels), IGNORE, labels).astype(np.uint8)
        save_png(voc / "SegmentationClass" / f"{image_id}.png", official, voc_palette())
    for index in splits["train"]:
        save_png(voc / "SegmentationClassAug" / f"{ids[index]}.png", lut[scenes[index].styles])
    for split, indices in splits.items():
        write_lines(lists / f"{split}.txt", [ids[i] for i in indices])
    write_lines(lists / "trainaug.txt", [ids[i] if reference else
                                         f"/JPEGImages/{ids[i]}.jpg /SegmentationClassAug/{ids[i]}.png"
                                         for i in splits["train"]])


def write_ade20k(out: Path, scenes: list[Scene], splits: dict[str, list[int]], seed: int) -> None:
    ade = out / "ADEChallengeData2016"
    lut = np.asarray(ADE_IDS, dtype=np.uint8)
    for split, folder, prefix in (("train", "training", "ADE_train"), ("val", "validation", "ADE_val")):
        for number, index in enumerate(splits[split], start=1):
            scene, name = scenes[index], f"{prefix}_{number:08d}"
            image, labels = scene.image.copy(), lut[scene.styles]
            rng = np.random.default_rng([seed, index, 1])
            if rng.random() < 0.5:  # an unlabelled "other" blob: plain noise, on-disk 0
                blob = np.zeros(labels.shape, np.uint8)
                height, width = labels.shape
                centre = (int(rng.integers(width)), int(rng.integers(height)))
                axes = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
                cv2.ellipse(blob, centre, axes, 0, 0, 360, 1, thickness=-1)
                labels[blob > 0] = 0
                image[blob > 0] = rng.integers(0, 256, size=(int(blob.sum()), 3), dtype=np.uint8)
            save_jpeg(ade / "images" / folder / f"{name}.jpg", image)
            save_png(ade / "annotations" / folder / f"{name}.png", labels)


def write_cityscapes(out: Path, scenes: list[Scene], splits: dict[str, list[int]], seed: int) -> None:
    train_ids = np.asarray(CITYSCAPES_TRAIN_IDS, dtype=np.uint8)  # per style
    label_ids_of_style = np.asarray([LABEL_ID_OF_TRAIN_ID[t] for t in CITYSCAPES_TRAIN_IDS], dtype=np.uint8)
    for split, indices in splits.items():
        cities = CITYSCAPES_CITIES[split]
        for number, index in enumerate(indices):
            city = cities[number % len(cities)]
            stem = f"{city}_{index:06d}_000019"
            image, styles = scenes[index].image.copy(), scenes[index].styles
            labels, label_ids = train_ids[styles], label_ids_of_style[styles]
            rng = np.random.default_rng([seed, index, 2])
            if rng.random() < 0.5:  # the ego vehicle's bonnet: a dark band along the bottom
                top = labels.shape[0] - int(rng.integers(labels.shape[0] // 12, labels.shape[0] // 7))
                labels[top:], label_ids[top:] = IGNORE, EGO_VEHICLE_LABEL_ID
                image[top:] = rng.integers(20, 60, size=image[top:].shape, dtype=np.uint8)
            save_png(out / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}", image)
            save_png(out / "gtFine" / split / city / f"{stem}{MASK_SUFFIX}", labels)
            save_png(out / "gtFine" / split / city / f"{stem}{LABEL_IDS_SUFFIX}", label_ids)


def write_folder(out: Path, scenes: list[Scene], splits: dict[str, list[int]]) -> None:
    ids = [f"img_{i:04d}" for i in range(len(scenes))]
    write_lines(out / "classes.txt", [name for name, _, _ in STYLES])
    for image_id, scene in zip(ids, scenes):
        save_jpeg(out / "images" / f"{image_id}.jpg", scene.image)
        save_png(out / "masks" / f"{image_id}.png", scene.styles)
    for split, indices in splits.items():
        write_lines(out / "splits" / f"{split}.txt", [ids[i] for i in indices])


def rle_of(region: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def write_coco_stuff(out: Path, scenes: list[Scene], splits: dict[str, list[int]]) -> None:
    things = [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in COCO_THINGS]
    stuff = [{"id": cid, "name": name, "supercategory": "stuff"} for cid, name in (COCO_BACKGROUND, COCO_OTHER)]
    for split in ("train", "val"):
        folder = f"{split}2017"
        images, stuff_anns, thing_anns = [], [], []
        for index in splits[split]:
            scene, image_id = scenes[index], index + 1
            height, width = scene.styles.shape
            file_name = f"{image_id:012d}.jpg"
            save_jpeg(out / "images" / folder / file_name, scene.image)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for category, region in ((COCO_BACKGROUND[0], scene.styles == 0),
                                     (COCO_OTHER[0], scene.styles > 0)):
                if region.any():
                    stuff_anns.append({"id": len(stuff_anns) + 1, "image_id": image_id,
                                       "category_id": category, "segmentation": rle_of(region),
                                       "area": int(region.sum()), "iscrowd": 0})
            for obj in scene.objects:
                thing_anns.append({"id": len(thing_anns) + 1, "image_id": image_id,
                                   "category_id": COCO_THINGS[obj.style - 1][0],
                                   "segmentation": [obj.polygon], "area": int(obj.region.sum()),
                                   "iscrowd": 0})
        for prefix, anns, categories in (("stuff_", stuff_anns, stuff), ("instances_", thing_anns, things)):
            path = out / "annotations" / f"{prefix}{folder}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))


# ------------------------------------------------------------------------ entry
def prepare_folder(out: Path) -> None:
    """Refuse a non-empty folder unless an earlier demo wrote it; then clear what it wrote."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DatasetError(f"{out}: folder is not empty and holds no demo dataset; choose another")
        for name in _WRITTEN:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_demo_dataset(out: str | Path, layout: str = "voc", n_images: int = 50, seed: int = 0,
                       n_val: int | None = None) -> Path:
    """Write `n_images` generated images (`n_val` of them, default a quarter, in val)
    in `layout`; returns the root to give to build_dataset."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown demo layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    n_val = max(1, n_images // 4) if n_val is None else n_val
    if n_images < 2 or not 1 <= n_val < n_images:
        raise DatasetError(f"demo needs at least one train and one val image (got {n_images} images, {n_val} val)")
    out = Path(out)
    prepare_folder(out)
    # The first object of image i cycles through the classes, so every class appears in both splits.
    scenes = [render_scene(np.random.default_rng([seed, i]), first_style=1 + i % NUM_FOREGROUND)
              for i in range(n_images)]
    n_train = n_images - n_val
    splits = {"train": list(range(n_train)), "val": list(range(n_train, n_images))}
    if layout in ("voc", "vocsegmentation"):
        write_voc(out, scenes, splits, reference=layout == "vocsegmentation")
    elif layout == "ade20k":
        write_ade20k(out, scenes, splits, seed)
    elif layout == "cityscapes":
        write_cityscapes(out, scenes, splits, seed)
    elif layout == "folder":
        write_folder(out, scenes, splits)
    else:
        write_coco_stuff(out, scenes, splits)
    (out / MARKER).write_text(json.dumps({"layout": layout, "n_images": n_images, "n_val": n_val,
                                          "seed": seed}))
    return out


def is_demo_root(root) -> bool:
    """Whether the dataset root `root` (what write_demo_dataset returns) holds segfungi's
    generated demo data: the MARKER file it leaves there."""
    return bool(root) and (Path(root).expanduser() / MARKER).is_file()
