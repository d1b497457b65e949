"""A generic folder of images and class-id masks.

    <root>/images/<id>.{jpg,jpeg,png}
    <root>/masks/<id>.png          single-channel class-id PNG (mode L or P)
    <root>/classes.txt             one class name per line, in class-id order
    <root>/splits/<name>.txt       optional id lists; split "all" = every image

classes.txt: blank lines and lines starting with "#" are skipped. An optional line
`ignore: N` says that the on-disk value N means "ignore": N becomes 255 and the values
above N move down by one, so the listed names are always classes 0..C-1 (`ignore: 0`
reads ADE20K-style masks where 0 = unlabelled and names start at 1). Without it, the
on-disk values are the class ids. On-disk 255 is always ignore."""

from __future__ import annotations

from pathlib import Path

from segfungi.data.base import ClassIdMasks, SampleFiles, SegDataset
from segfungi.data.idlists import IMAGE_SUFFIXES, check_unique, read_id_file, read_lines
from segfungi.data.labels import IGNORE, distinct_palette
from segfungi.infra.errors import DatasetError


def read_classes(path: Path) -> tuple[list[str], int]:
    """(class names, on-disk ignore value) from classes.txt."""
    lines = read_lines(path, "classes file")
    names, ignore = [], IGNORE
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("ignore:"):
            value = line.split(":", 1)[1].strip()
            if not value.isdigit() or int(value) > 255:
                raise DatasetError(f"{path}:{number}: 'ignore:' needs a value 0..255, got {value!r}")
            ignore = int(value)
            continue
        names.append(line)
    if not names:
        raise DatasetError(f"{path}: no class names")
    if len(names) > 255:
        raise DatasetError(f"{path}: {len(names)} classes; at most 255 fit beside the ignore label")
    check_unique(names, path, what="class names")
    return names, ignore


def disk_to_class(num_classes: int, ignore: int) -> dict[int, int]:
    mapping = {IGNORE: IGNORE, ignore: IGNORE}
    for value in range(255):
        if value != ignore:
            class_id = value if value < ignore else value - 1
            if class_id < num_classes:
                mapping[value] = class_id
    return mapping


def list_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder missing")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder}: no .jpg/.jpeg/.png images")
    check_unique([p.stem for p in paths], folder)  # a.jpg and a.png would be one ambiguous id
    return {p.stem: p for p in paths}


def open_folder(root: Path, split: str = "all", on_bad_sample: str = "error") -> SegDataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder missing")
    classes, ignore = read_classes(root / "classes.txt")
    images = list_images(root / "images")
    masks = root / "masks"
    if not masks.is_dir():
        raise DatasetError(f"{masks}: mask folder missing")
    if split == "all":
        ids, source = list(images), str(root / "images")
    else:
        source = str(root / "splits" / f"{split}.txt")
        ids = read_id_file(source)
    missing_image = root / "images"
    files = [
        SampleFiles(i, images.get(i, missing_image / f"{i}.{{jpg,jpeg,png}}"), masks / f"{i}.png")
        for i in ids
    ]
    rule = f"{len(classes)} classes" + (f", on-disk {ignore} = ignore" if ignore != IGNORE else "")
    return SegDataset(
        name="folder", root=root, split=split, classes=classes,
        palette=distinct_palette(len(classes)), files=files,
        read_mask=ClassIdMasks(disk_to_class(len(classes), ignore), rule + ", 255 = ignore"),
        source=source, on_bad_sample=on_bad_sample,
    )
