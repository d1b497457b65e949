"""Image-id list files (split files, few-shot subset files): one image per line.

A line is either a bare id (`2007_000032`) or, as in the list files distributed with
the augmented VOC set, paths whose first one names the image
(`/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`): the id is the
first token's file name without its image extension. A bare id is kept whole, "/"
included (Cityscapes ids are "<city>/<name>"). Blank lines are skipped.
A missing or empty file and duplicate ids are always errors: a list that names an
image twice is not the list the user meant to give."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from segfungi.infra.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def id_from_token(token: str) -> str:
    """A path to an image file gives its file name without the extension; any other token
    is the id itself (Cityscapes ids hold a "/": "aachen/aachen_000000_000019")."""
    path = token.replace("\\", "/")
    for suffix in IMAGE_SUFFIXES:
        if path.lower().endswith(suffix):
            return path.rsplit("/", 1)[-1][: -len(suffix)]
    return token


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a small UTF-8 list file (split, subset or classes file). A missing
    or unreadable file is a one-line error naming it and saying which file it is."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read {what} ({err})") from None


def read_id_file(path: str | Path, what: str = "split file") -> list[str]:
    path = Path(path)
    ids = [id_from_token(line.split()[0]) for line in read_lines(path, what) if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: {what} is empty")
    check_unique(ids, path)
    return ids


def check_unique(ids: list[str], source: str | Path, what: str = "image ids") -> None:
    duplicates = [image_id for image_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        shown = ", ".join(duplicates[:5]) + (" …" if len(duplicates) > 5 else "")
        raise DatasetError(f"{source}: duplicate {what} ({len(duplicates)}): {shown}")
