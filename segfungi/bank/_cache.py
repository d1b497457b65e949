"""The last-block cache of a FUNGI build: each augmented image's last-block input.

The support (embeddings) pass of a FUNGI build encodes the same augmented images the
FUNGI pass needs; with `bank.cache_last_block_input` it keeps each image's input to the
last block (T×D float16) in `<fungi bank>/last_block_input/NNNNN/` (one folder per shard,
written atomically with checksums, before the support shard itself, so a support shard
that exists always had its cache written). The FUNGI pass of shard NNNNN then reruns
only the last block and removes the folder; what is left goes when the bank is finished.
A missing or damaged folder (resumed build, support bank from an earlier run) reads as
None: the FUNGI pass recomputes the input from the images, rounded to float16 the same
way, so a bank does not depend on which shards had a cache.

When the support has views of its own (`fungi.support_views: independent`), no support
shard holds the bank's kept patches: a separate pass over the bank's own views writes
the cache, and each shard's folder then also holds, per patches-kept-per-view count K
of the sizes being built, the kept patches' labels and provenance
(`label_ids_keepK`, `label_weights_keepK`, `provenance_keepK`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from segfungi.bank._layout import shard_name
from segfungi.infra.errors import BankError
from segfungi.infra.storage import load_array, verify_folder, write_arrays_atomic


class LastBlockCache:
    """Last-block inputs by shard, in one folder; `tokens` and `dim` fix their shape."""

    def __init__(self, folder: Path, tokens: int, dim: int):
        self.folder, self.tokens, self.dim = Path(folder), tokens, dim

    def store(self, shard: int, inputs: np.ndarray, labels: Mapping[int, Mapping[str, np.ndarray]] | None = None) -> None:
        """Keep one shard's inputs (items × T × D float16) and, when given, the labels of the
        patches each keep count K keeps ({K: {label_ids, label_weights, provenance}})."""
        arrays = {"last_block_input": inputs}
        for keep, named in (labels or {}).items():
            arrays.update({f"{name}_keep{keep}": array for name, array in named.items()})
        write_arrays_atomic(self.folder / shard_name(shard), arrays, {"shard": shard, "items": len(inputs)})

    def has(self, shard: int) -> bool:
        """Whether a folder for this shard is there (it is checked when loaded)."""
        return (self.folder / shard_name(shard)).is_dir()

    def load(self, shard: int, items: int) -> np.ndarray | None:
        """One shard's inputs, or None when they are missing, damaged or of another shape."""
        folder = self.folder / shard_name(shard)
        if not folder.is_dir() or verify_folder(folder):
            return None
        try:
            inputs = load_array(folder / "last_block_input.npy")
        except BankError:
            return None
        if inputs.dtype != np.float16 or inputs.shape != (items, self.tokens, self.dim):
            return None
        return inputs

    def load_labels(self, shard: int, keep: int) -> dict[str, np.ndarray] | None:
        """The labels stored with a shard's inputs for keep count `keep`, or None; call after
        `load` (which checks the folder)."""
        folder = self.folder / shard_name(shard)
        try:
            return {name: load_array(folder / f"{name}_keep{keep}.npy")
                    for name in ("label_ids", "label_weights", "provenance")}
        except BankError:
            return None

    def discard(self, shard: int) -> None:
        shutil.rmtree(self.folder / shard_name(shard), ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
