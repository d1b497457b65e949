"""`SegDataset`: the one dataset class every layout (VOC, ADE20K, COCO-Stuff, folder)
builds. A layout only decides where the files are and how masks are read.

Bad-sample policy (`on_bad_sample`):

  =========================================================  ==========  ==========
  problem                                                    "error"     "skip"
  =========================================================  ==========  ==========
  dataset root / expected folder missing                     fatal       fatal
  split file missing or empty, unknown split name            fatal       fatal
  duplicate ids (split file, subset file, folder listing)    fatal       fatal
  classes.txt / COCO json missing or malformed               fatal       fatal
  listed image or mask file missing or 0 bytes               raise       skip
  image/mask unreadable, truncated, unsupported mode         raise       skip
  file not JPEG/PNG/BMP/TIFF/WebP/GIF/PPM (see imageio.py)   raise       skip
  RGB (colour-rendered) or JPEG mask                         raise       skip
  mask size ≠ image size (COCO: json size ≠ image size)      raise       skip
  mask value not a label of the dataset                      raise       skip
  image smaller than one 16×16 patch                         raise       skip
  COCO annotation that cannot be decoded                     raise       skip
  every listed sample bad                                    fatal       fatal
  =========================================================  ==========  ==========

File names that are not UTF-8 (bytes names on Linux) are fine: their ids keep Python's
surrogate escapes and messages print them escaped.

"fatal" problems concern the dataset as a whole and always raise `DatasetError`.
With "error", per-sample problems raise at the first bad sample: missing/empty files
are found when the dataset is opened (a cheap stat of every file), content problems
when the sample is read. With "skip", the dataset reads every sample once when it is
opened (so it costs one pass over the data) and drops the bad ones: `ids` then lists
only good samples, `dataset[i]` never returns a broken pair, and `bad_samples` holds
`(id, reason)` for each dropped one. Should a file go bad after that pass, reading it
raises; a broken pair is never returned.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from segfungi.data.idlists import check_unique
from segfungi.data.imageio import read_class_mask, read_image
from segfungi.infra.errors import ConfigError, DatasetError

MIN_SIDE = 16  # one ViT patch: a smaller image has no patch to describe
POLICIES = ("error", "skip")


class Sample(NamedTuple):
    """RGB uint8 H×W×3 image, uint8 H×W class-id mask (255 = ignore), image id."""

    image: np.ndarray
    mask: np.ndarray
    id: str


@dataclass(frozen=True)
class SampleFiles:
    id: str
    image: Path
    mask: Path | None = None  # None when the mask is drawn from annotations (COCO)


MaskReader = Callable[[SampleFiles, tuple], np.ndarray]


class ClassIdMasks:
    """Masks stored as class-id images: each on-disk value maps to a segfungi class id
    (or to 255 = ignore) through a 256-entry table; any other value is an error."""

    def __init__(self, mapping: dict[int, int], rule: str):
        self.table = np.full(256, -1, dtype=np.int16)
        for on_disk, class_id in mapping.items():
            self.table[on_disk] = class_id
        self.rule = rule  # how the on-disk values are meant, for error messages

    def __call__(self, files: SampleFiles, image_shape: tuple) -> np.ndarray:
        raw = read_class_mask(files.mask)
        check_same_size(raw.shape, image_shape, files.mask, files.image)
        mapped = self.table[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0])
            shown = ", ".join(str(v) for v in bad[:8]) + (" …" if len(bad) > 8 else "")
            raise DatasetError(f"{files.mask}: mask values {shown} are not labels here ({self.rule})")
        return mapped.astype(np.uint8)


def check_same_size(mask_shape: tuple, image_shape: tuple, mask_source, image_path: Path) -> None:
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        (mh, mw), (ih, iw) = mask_shape[:2], image_shape[:2]
        raise DatasetError(f"{mask_source}: mask is {mw}×{mh} but image {image_path} is {iw}×{ih}")


def check_policy(on_bad_sample: str) -> None:
    if on_bad_sample not in POLICIES:
        raise ConfigError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")


class LabelledImages:
    """What every segfungi dataset offers besides reading a sample (`SegDataset` on disk,
    `segfungi.data.pairs.PairDataset` in memory): `classes`, `num_classes`, `ids`, `len`,
    iteration in id order. Subclasses set `classes` and `_ids` and define `__getitem__`."""

    classes: tuple[str, ...]
    _ids: tuple[str, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return self._ids

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self._ids)):
            yield self[index]


class SegDataset(LabelledImages):
    """Indexable by position or by image id; `dataset[i] -> Sample(image, mask, id)`."""

    def __init__(self, *, name: str, root: Path, split: str, classes: Sequence[str],
                 palette: np.ndarray, files: Sequence[SampleFiles], read_mask: MaskReader,
                 source: str, on_bad_sample: str = "error"):
        check_policy(on_bad_sample)
        self.name, self.root, self.split = name, Path(root), split
        self.classes = tuple(classes)
        self.palette = palette
        self.on_bad_sample = on_bad_sample
        self.source = source  # where the ids came from (split file, folder, json)
        self.subset_info: dict | None = None
        self.bad_samples: list[tuple[str, str]] = []
        self._read_mask = read_mask
        check_unique([f.id for f in files], source)
        self._files = {f.id: f for f in files if self._files_present(f)}
        if on_bad_sample == "skip":
            self._drop_unreadable()
        if not self._files:
            first = self.bad_samples[0][1] if self.bad_samples else "no images listed"
            raise DatasetError(f"{source}: none of the {len(files)} listed samples is usable ({first})")
        self._ids = tuple(self._files)

    # ------------------------------------------------------------------ access
    def __getitem__(self, key: int | str) -> Sample:
        if isinstance(key, str):
            if key not in self._files:
                raise KeyError(f"{self.name} {self.split}: no image with id {key!r}")
            return self.load(self._files[key])
        return self.load(self._files[self._ids[key]])

    def files(self, image_id: str) -> SampleFiles:
        return self._files[image_id]

    def load(self, files: SampleFiles) -> Sample:
        """Read and check one sample; any problem raises DatasetError naming the file."""
        image = read_image(files.image)
        height, width = image.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise DatasetError(
                f"{files.image}: image is {width}×{height}, smaller than one {MIN_SIDE}×{MIN_SIDE} patch"
            )
        mask = self._read_mask(files, image.shape)
        return Sample(image, mask, files.id)

    # ------------------------------------------------------------- bad samples
    def _reject(self, image_id: str, reason: str) -> None:
        if self.on_bad_sample == "error":
            raise DatasetError(reason)
        self.bad_samples.append((image_id, reason))

    def _files_present(self, files: SampleFiles) -> bool:
        for kind, path in (("image", files.image), ("mask", files.mask)):
            if path is None:
                continue
            if not path.is_file():
                self._reject(files.id, f"{path}: {kind} file missing (id {files.id} from {self.source})")
                return False
            if path.stat().st_size == 0:
                self._reject(files.id, f"{path}: {kind} file is empty (0 bytes)")
                return False
        return True

    def _drop_unreadable(self) -> None:
        for image_id, files in list(self._files.items()):
            try:
                self.load(files)
            except DatasetError as err:
                self.bad_samples.append((image_id, str(err)))
                del self._files[image_id]

    # ----------------------------------------------------------------- subsets
    def restricted(self, ids: Sequence[str], subset_info: dict) -> "SegDataset":
        """A copy that holds only `ids` (all of them must be in this dataset)."""
        view = copy.copy(self)
        view._files = {image_id: self._files[image_id] for image_id in ids}
        view._ids = tuple(view._files)
        view.bad_samples = list(self.bad_samples)
        view.subset_info = subset_info
        return view

    def identity(self) -> dict:
        """What a manifest needs to know which samples were used."""
        return {
            "dataset": self.name,
            "root": str(self.root),
            "split": self.split,
            "num_images": len(self),
            "num_classes": self.num_classes,
            "ids_sha256": hashlib.sha256("\n".join(self._ids).encode()).hexdigest(),
            "subset": self.subset_info,
            "bad_samples": len(self.bad_samples),
        }

    def __repr__(self) -> str:
        return (f"SegDataset({self.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes}, skipped={len(self.bad_samples)})")

