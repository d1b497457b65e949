"""Any (image, mask) pairs as a segfungi dataset, for `build_bank(..., dataset=)` and
`evaluate(..., dataset=)`.

An item is an `(image, mask)` pair (or anything with `.image` and `.mask`): the image an
RGB uint8 H×W×3 array (a PIL image, a 3×H×W uint8 tensor and a greyscale H×W array are
converted), the mask an H×W array of class ids 0..C-1 with 255 = ignore. Items are read
by position, so `items` must support `len` and `[i]` (a list, a torch Dataset); any other
iterable is read into a list once.

`name` is your name for the data. A bank records it with the class list, the number of
images and their ids (positions unless `ids` are given), so name different data
differently: two datasets of the same name, classes and size are taken to be the same.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from segfungi.data.base import LabelledImages, Sample
from segfungi.data.labels import IGNORE, distinct_palette
from segfungi.infra.errors import DatasetError


class PairDataset(LabelledImages):
    """(image, mask) items with a class list, read like a `SegDataset`: `classes`,
    `num_classes`, `palette`, `ids`, `name`, `bad_samples`, `[i] -> Sample`."""

    def __init__(self, items: Any, classes: Sequence[str], *, name: str = "custom",
                 palette: np.ndarray | None = None, ids: Sequence[str] | None = None):
        if not hasattr(items, "__getitem__") or not hasattr(items, "__len__"):
            items = list(items)
        self.items = items
        self.classes = tuple(str(c) for c in classes)
        if not self.classes or len(self.classes) > IGNORE:
            raise DatasetError(f"dataset {name!r}: needs 1..{IGNORE} class names, got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise DatasetError(f"dataset {name!r}: class names repeat: {list(self.classes)}")
        self.name = str(name)
        self.palette = _palette(palette, len(self.classes), self.name)
        self._ids = tuple(str(i) for i in ids) if ids is not None else tuple(str(i) for i in range(len(items)))
        if len(self._ids) != len(items) or len(set(self._ids)) != len(self._ids):
            raise DatasetError(f"dataset {name!r}: ids must be {len(items)} distinct values, one per item")
        if not len(items):
            raise DatasetError(f"dataset {name!r}: has no items")
        self.bad_samples: list[tuple[str, str]] = []

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        if hasattr(item, "image") and hasattr(item, "mask"):
            image, mask = item.image, item.mask
        else:
            try:
                image, mask = item
            except (TypeError, ValueError) as err:
                raise DatasetError(f"dataset {self.name!r} item {index}: expected an (image, mask) pair, "
                                   f"got {type(item).__name__}") from err
        where = f"dataset {self.name!r} item {index}"
        image, mask = _as_image(image, where), _as_mask(mask, where, self.num_classes)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"{where}: mask is {mask.shape[1]}×{mask.shape[0]} but the image "
                               f"{image.shape[1]}×{image.shape[0]}")
        return Sample(image, mask, self._ids[index])

    def identity(self) -> dict:
        return {"dataset": self.name, "num_images": len(self), "num_classes": self.num_classes}


def from_pairs(items: Any, classes: Sequence[str], *, name: str = "custom",
               palette: np.ndarray | None = None, ids: Sequence[str] | None = None) -> PairDataset:
    """A dataset of `items` ((image, mask) pairs) whose mask ids name `classes`."""
    return PairDataset(items, classes, name=name, palette=palette, ids=ids)


def as_dataset(data: Any, classes: Sequence[str] | None = None, *, name: str | None = None):
    """`data` as a segfungi dataset: a `SegDataset` or `PairDataset` as it is; any other
    object yielding (image, mask) pairs with `classes` (given here or as its attribute)."""
    if isinstance(data, LabelledImages) and classes is None and name is None:
        return data
    classes = classes if classes is not None else getattr(data, "classes", None)
    if classes is None:
        raise DatasetError(f"a {type(data).__name__} dataset needs a class list: give it a `classes` attribute "
                           "or use segfungi.from_pairs(items, classes)")
    return PairDataset(data, classes, name=name or str(getattr(data, "name", "custom")),
                       palette=getattr(data, "palette", None))


def _palette(palette, num_classes: int, name: str) -> np.ndarray:
    if palette is None:
        return distinct_palette(num_classes)
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < num_classes:
        raise DatasetError(f"dataset {name!r}: palette must be N×3 colours with N >= {num_classes}, "
                           f"got {palette.shape}")
    full = distinct_palette(num_classes)
    rows = min(len(palette), 256)
    full[:rows] = palette[:rows].astype(np.uint8)
    return full


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _as_image(image, where: str) -> np.ndarray:
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        image = image.convert("RGB")
    array = _numpy(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[2] != 3:
        array = array.transpose(1, 2, 0)  # C×H×W, as torchvision tensors are
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise DatasetError(f"{where}: the image must be uint8 H×W×3 RGB, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def _as_mask(mask, where: str, num_classes: int) -> np.ndarray:
    array = _numpy(mask)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[2]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(f"{where}: the mask must be an H×W array of integer class ids, got {array.dtype} "
                           f"{array.shape}")
    bad = (array != IGNORE) & ((array < 0) | (array >= num_classes))
    if bad.any():
        raise DatasetError(f"{where}: mask value {int(array[bad][0])} is not a class id 0..{num_classes - 1} "
                           f"or {IGNORE} (ignore)")
    return array.astype(np.uint8)
