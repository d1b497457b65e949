"""Reading a complete memory bank folder, checked against its manifest (layout: _layout).

`MemoryBank` only reads: it checks what it reads (sizes, checksums, dtypes, shapes) and
hands out what the bank is (`identity`, `hash`, `classes`, `settings`, …), the shard
arrays (`array`, `iter_shards`, `load`, `feature_rows`) and the search index (`index`).
It is the one reader of `manifest.json`: nothing outside segfungi.bank opens that file.
Writing a bank's index belongs to the build (`_build`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np

from segfungi.bank._identity import BankIdentity
from segfungi.bank._layout import INDEX_DIR, MANIFEST, SHARDS_DIR, SUPPORT_DIR, not_a_bank
from segfungi.feature_kinds import check_feature_kind
from segfungi.index import index_kinds
from segfungi.infra.errors import BankError
from segfungi.infra.storage import (
    ARRAY_NAME,
    check_file,
    load_array,
    read_json,
    verify_folder,
)

# -------------------------------------------------------------------------- read
# Array files of a shard: dtype and number of dimensions. Rows always equal the
# shard's patch count; features have the manifest's feature_dim columns.
ARRAY_SPECS = {
    "features": (np.float16, 2),
    "label_ids": (np.int16, 2),
    "label_weights": (np.float16, 2),
    "provenance": (np.int32, 2),
    "embedding_norm": (np.float32, 1),
}
VERIFY_MODES = ("on-read", "full", "off")
_SHARD_NAME = re.compile(r"^\d{5}$")
_HEX = re.compile(r"^[0-9a-f]{16,128}$")


class MemoryBank:
    """A complete bank folder: features and labels read shard by shard, never unpickled.

    The manifest is checked when the bank is opened (structure, shard and file names,
    types), and so is every file's size. `verify` decides how checksums are used:

    * "on-read" (default): each file's checksum is checked the first time this object
      reads it (features, labels, the ScaNN index), before its content is used. A
      truncated or bit-flipped file raises BankError naming it, never a wrong mIoU.
      Cost: one extra pass over the bytes read, ~0.5 s per 10^5×768 float16 features
      (150 MB) on 2 busy CPU cores, i.e. ~25% on top of `load_features`; nothing is
      paid for files a command does not read.
    * "full": every file is checked when the bank is opened (what `segfungi bank verify`
      does).
    * "off": sizes and checksums are not checked (for tools that report problems themselves).
    """

    def __init__(self, path: str | Path, shards_override: list | None = None, verify: str = "on-read"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.path = Path(path)
        self.verify_mode = verify
        self._verified: set[Path] = set()
        if shards_override is not None:
            self.manifest = {"shards": shards_override}
        elif not (self.path / MANIFEST).exists():
            raise BankError(not_a_bank(self.path))
        else:
            self.manifest = read_json(self.path / MANIFEST)
            _check_manifest(self.manifest, self.path / MANIFEST)
        self.shards = _check_shards(self.manifest.get("shards"), self.path / MANIFEST)
        if verify != "off":
            problems = self.verify(full=verify == "full", index=verify == "full")
            if problems:
                raise _damaged(self.path, problems)

    # what the bank is
    @functools.cached_property
    def identity(self) -> BankIdentity:
        """What the bank is (`segfungi.bank.BankIdentity`): backbone and weights, features,
        training images, sampling, support."""
        return BankIdentity.from_record(self.manifest["identity"], self.path / MANIFEST)

    @property
    def hash(self) -> str:
        """The identity's hash, as recorded when the bank was built."""
        return self.manifest["hash"]

    @property
    def features(self) -> str:
        """embeddings | fungi."""
        return self.identity.features

    @property
    def skipped_samples(self) -> list[tuple[str, str]]:
        """(image id, reason) of each training sample left out as bad (--on-bad-sample skip)."""
        return [(str(i), str(reason)) for i, reason in self.manifest.get("skipped_samples") or []]

    @property
    def patches_per_image(self) -> int:
        return int(self.manifest["patches_per_image"])

    @property
    def index_kind(self) -> str:
        return self.manifest["index"]["kind"]

    @property
    def build_info(self) -> dict:
        """When and how fast it was built: created, build_seconds, segfungi_version."""
        return {k: self.manifest.get(k) for k in ("created", "build_seconds", "segfungi_version")}

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def palette(self) -> np.ndarray:
        return np.asarray(self.manifest["palette"], dtype=np.uint8)

    @property
    def num_patches(self) -> int:
        return int(sum(s["patches"] for s in self.shards))

    @property
    def feature_dim(self) -> int:
        if "feature_dim" in self.manifest:
            return int(self.manifest["feature_dim"])
        return int(self.array(self.shards[0], "features", mmap=True, header_only=True).shape[1])

    @property
    def settings(self) -> dict:
        """The settings the bank was built with; keys added to segfungi since take their
        defaults and retired keys are dropped (segfungi.settings_schema.stored_settings)."""
        from segfungi.settings_schema import stored_settings

        return stored_settings(self.manifest["settings"])

    @property
    def support_path(self) -> Path:
        return self.path / SUPPORT_DIR

    # reading
    def array(self, shard: dict | str, name: str, mmap: bool = False, header_only: bool = False) -> np.ndarray:
        """One array file (`name`: features, label_ids, …) of one shard (its manifest entry
        or its name NNNNN), checked as the bank's verify mode says; `mmap`: memory-mapped."""
        if isinstance(shard, str):
            name_given = shard
            shard = next((s for s in self.shards if s["name"] == name_given), None)
            if shard is None:
                raise BankError(f"{self.path / MANIFEST}: lists no shard {name_given!r}")
        path = self.path / SHARDS_DIR / shard["name"] / f"{name}.npy"
        if name not in shard["checksums"]:
            raise BankError(f"{path}: not listed in {self.path / MANIFEST}")
        if self.verify_mode != "off" and not header_only and path not in self._verified:
            problem = check_file(path, (shard.get("sizes") or {}).get(name), shard["checksums"][name])
            if problem:
                raise _damaged(self.path, [problem])
            self._verified.add(path)
        array = load_array(path, mmap=mmap)
        self._check_array(array, path, shard, name)
        return array

    def _check_array(self, array: np.ndarray, path: Path, shard: dict, name: str) -> None:
        rows = shard["patches"]
        spec = ARRAY_SPECS.get(name)
        problem = None
        if array.ndim == 0 or array.shape[0] != rows:
            problem = f"has shape {array.shape}, the manifest records {rows} patches"
        elif spec and (array.dtype != spec[0] or array.ndim != spec[1]):
            problem = f"is {array.dtype} with {array.ndim} dims, expected {np.dtype(spec[0])} with {spec[1]}"
        elif name == "features" and "feature_dim" in self.manifest and array.shape[1] != self.manifest["feature_dim"]:
            problem = f"has {array.shape[1]} feature dims, the manifest records {self.manifest['feature_dim']}"
        elif name == "provenance" and array.shape[1] != 3:
            problem = f"has shape {array.shape}, expected (patches, 3)"
        if problem:
            raise BankError(f"{path}: {problem}")

    def iter_shards(self, name: str):
        for shard in self.shards:
            yield self.array(shard, name, mmap=True)

    def load(self, name: str, dtype=None) -> np.ndarray:
        parts = [np.asarray(a, dtype=dtype) for a in self.iter_shards(name)]
        return np.concatenate(parts) if parts else np.zeros((0,))

    def feature_rows(self):
        """All features as one row-addressable float16 view over the shard files
        (`segfungi.index.ConcatRows`): what the indexes are built from."""
        from segfungi.index import ConcatRows

        parts = [lambda shard=shard: self.array(shard, "features", mmap=True) for shard in self.shards]
        return ConcatRows(parts, [s["patches"] for s in self.shards], self.feature_dim, np.float16)

    def load_features(self) -> np.ndarray:
        return self.load("features", dtype=np.float32)

    def load_labels(self) -> tuple[np.ndarray, np.ndarray]:
        ids, weights = self.load("label_ids", dtype=np.int64), self.load("label_weights", dtype=np.float32)
        if "classes" in self.manifest:
            num_classes = len(self.classes)
            if ids.shape != weights.shape:
                raise BankError(f"{self.path}: label_ids {ids.shape} and label_weights {weights.shape} differ")
            if ids.size and (ids.min() < -1 or ids.max() >= num_classes):
                raise BankError(f"{self.path}: label ids {ids.min()}..{ids.max()} outside -1..{num_classes - 1} "
                                f"({num_classes} classes in {MANIFEST})")
            if weights.size and not (np.isfinite(weights).all() and weights.min() >= 0 and weights.max() <= 1.01):
                raise BankError(f"{self.path}: label weights outside 0..1 (corrupt label_weights)")
        return ids, weights

    def verify(self, full: bool = True, index: bool = True) -> list[str]:
        """Every shard file (and the saved index) against the manifest's sizes and
        checksums; `full=False` compares sizes only. Returns the problems found."""
        problems = []
        for shard in self.shards:
            folder = self.path / SHARDS_DIR / shard["name"]
            problems += verify_folder(folder, shard["checksums"], shard.get("sizes"), full=full)
        if index and "checksums" in (self.manifest.get("index") or {}):  # a saved index
            problems += self._index_problems(full)
        return problems

    def _index_problems(self, full: bool = True) -> list[str]:
        folder = self.path / INDEX_DIR
        info = self.manifest.get("index") or {}
        checksums, sizes = info.get("checksums"), info.get("sizes") or {}
        if not folder.is_dir():
            return [f"{folder}: missing (the manifest records a saved {self.index_kind} index)"]
        if not isinstance(checksums, dict):
            return []  # a bank from before index checksums: nothing recorded to compare
        problems = []
        for name, expected in checksums.items():
            if not _plain_file_name(name):
                problems.append(f"{folder}: index file name {name!r} is not a plain name (refused)")
                continue
            problem = check_file(folder / name, sizes.get(name), expected if full else None)
            if problem:
                problems.append(problem)
        return problems

    # index
    def index(self, settings, device: str = "cpu"):
        """The search index: loaded when saved, else (exact) built from the features.
        `settings` (`IndexSettings`) give the search-time values (leaves searched, reorder),
        e.g. few-shot's; an exact index lives on `device` (a GPU's matmul + top-k)."""
        from segfungi.index import IndexSettings, index_kind, load_index, make_index

        if not index_kind(self.index_kind, where=str(self.path / MANIFEST)).saved:  # rebuilt from the features
            return make_index(self.feature_rows(), dataclasses.replace(settings, kind=self.index_kind), device=device)
        folder = self.path / INDEX_DIR
        if self.verify_mode != "off":
            problems = self._index_problems(full=True)
            if problems:
                raise _damaged(self.path, problems)
        try:
            index = load_index(folder)
        except BankError:
            raise
        except Exception as err:  # a native loader (ScaNN's C++) on a damaged file
            raise BankError(f"{folder}: cannot load the {self.index_kind} index ({type(err).__name__}: {err})") from None
        if index.num_vectors != self.num_patches:
            raise BankError(f"{folder}: index holds {index.num_vectors} rows, the bank {self.num_patches}")
        if isinstance(getattr(index, "settings", None), IndexSettings):  # search-time values apply to a saved index
            index.settings = dataclasses.replace(index.settings, num_leaves_to_search=settings.num_leaves_to_search,
                                                 reorder=settings.reorder)
        return index


def _damaged(path: Path, problems: list[str]) -> BankError:
    shown = "\n  ".join(problems[:10]) + (f"\n  … {len(problems) - 10} more" if len(problems) > 10 else "")
    return BankError(f"{path}: damaged bank (run `segfungi bank verify {path}`):\n  {shown}")


def _plain_file_name(name) -> bool:
    return isinstance(name, str) and bool(re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", name)) and name not in (".", "..")


def _check_shards(shards, where: Path) -> list[dict]:
    """Shard entries must name plain folders and plain array files (no paths)."""
    if not isinstance(shards, list):
        raise BankError(f"{where}: 'shards' must be a list")
    for i, shard in enumerate(shards):
        ok = (isinstance(shard, dict) and isinstance(shard.get("name"), str) and _SHARD_NAME.match(shard["name"])
              and isinstance(shard.get("patches"), int) and not isinstance(shard.get("patches"), bool)
              and shard["patches"] >= 0 and isinstance(shard.get("checksums"), dict)
              and all(isinstance(k, str) and ARRAY_NAME.match(k) and isinstance(v, str) and _HEX.match(v)
                      for k, v in shard["checksums"].items())
              and (shard.get("sizes") is None or (isinstance(shard["sizes"], dict) and all(
                  isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shard["sizes"].values()))))
        if not ok:
            raise BankError(f"{where}: shard entry {i} is malformed (expected name NNNNN, patches, "
                            f"checksums of plain array names): {str(shard)[:200]}")
    return shards


def _check_manifest(manifest, where: Path) -> None:
    """What the readers rely on; a manifest someone edited or crafted fails here by name."""
    if not isinstance(manifest, dict):
        raise BankError(f"{where}: expected a JSON object, got {type(manifest).__name__}")

    def need(key, kind, test=lambda v: True, what=""):
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or not test(value):
            raise BankError(f"{where}: '{key}' is missing or invalid (expected {what or kind.__name__})")
        return value

    need("hash", str)
    need("identity", dict)
    need("settings", dict)
    need("classes", list, lambda v: 0 < len(v) <= 255 and all(isinstance(c, str) for c in v),
                   "a list of 1..255 class names")
    need("palette", list, lambda v: len(v) == 256 and all(
        isinstance(row, list) and len(row) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in row)
        for row in v), "256 rows of 3 values 0..255")
    need("num_patches", int, lambda v: v >= 0)
    need("feature_dim", int, lambda v: v > 0)
    need("patches_per_image", int, lambda v: v > 0)
    need("index", dict, lambda v: v.get("kind") in index_kinds(), f"{{'kind': one of {', '.join(index_kinds())}}}")
    identity = BankIdentity.from_record(manifest["identity"], where)
    check_feature_kind(identity.features, f"{where}: identity.features", BankError)
    shards = _check_shards(manifest.get("shards"), where)
    if sum(s["patches"] for s in shards) != manifest["num_patches"]:
        raise BankError(f"{where}: shard patch counts do not add up to num_patches")
