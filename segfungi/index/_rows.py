"""Row arrays the indexes read: shards seen as one array, float32 conversion in chunks,
search-argument checks and result padding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Rows converted to float32 at a time (float16 memmaps are never converted whole).
CONVERT_CHUNK_ROWS = 65536


class ConcatRows:
    """Several 2-D arrays (a bank's shards) seen as one, without concatenating them.

    `parts` are callables that open one part (e.g. a memory-mapped shard file); a part is
    opened for each read and dropped right after, so only the rows being converted are
    ever resident, however large the bank. Supports what the indexes need: `shape`,
    `dtype`, `len`, and row selection by slice, integer array or boolean mask."""

    def __init__(self, parts, rows, dim: int, dtype=np.float16):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [int(r) for r in rows]).astype(np.int64)
        if len(self.offsets) != len(self.parts) + 1:
            raise ValueError(f"{len(self.parts)} parts but {len(self.offsets) - 1} row counts")
        self.shape = (int(self.offsets[-1]), int(dim))
        self.dtype = np.dtype(dtype)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, stop)
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        if key.ndim != 1:
            raise IndexError("ConcatRows takes a slice or a 1-D array of rows")
        key = np.where(key < 0, key + self.shape[0], key).astype(np.int64)
        out = np.empty((len(key), self.shape[1]), dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, key, side="right") - 1
        for part in np.unique(part_of):
            picked = np.flatnonzero(part_of == part)
            array = self._open(int(part))
            out[picked] = array[key[picked] - self.offsets[part]]
            del array
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, stop - start), self.shape[1]), dtype=self.dtype)
        first = int(np.searchsorted(self.offsets, start, side="right") - 1)
        for part in range(max(first, 0), len(self.parts)):
            lo, hi = self.offsets[part], self.offsets[part + 1]
            if lo >= stop:
                break
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                array = self._open(part)
                out[a - start : b - start] = array[a - lo : b - lo]
                del array
        return out

    def _open(self, part: int) -> np.ndarray:
        array = self.parts[part]() if callable(self.parts[part]) else self.parts[part]
        expected = (int(self.offsets[part + 1] - self.offsets[part]), self.shape[1])
        if tuple(array.shape) != expected:
            raise ValueError(f"part {part} has shape {tuple(array.shape)}, expected {expected}")
        return array



def as_array(features: Any) -> Any:
    """A row-sliceable array: numpy arrays and memmaps stay as they are (not loaded)."""
    if isinstance(features, torch.Tensor):
        return features.detach().cpu().numpy()
    if not hasattr(features, "shape") or len(features.shape) != 2:
        features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array (rows × dim), got shape {features.shape}")
    return features


def normalized_float32(rows: Any) -> np.ndarray:
    """Rows as C-contiguous float32 with unit L2 norm (all-zero rows stay zero)."""
    rows = np.array(rows, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows /= np.maximum(norms, 1e-12)
    return rows


def row_chunks(num_rows: int, chunk: int = CONVERT_CHUNK_ROWS):
    for start in range(0, num_rows, chunk):
        yield start, min(start + chunk, num_rows)


def check_search_args(queries: Any, dim: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if queries.shape[1] != dim:
        raise ValueError(f"queries have {queries.shape[1]} dims, the index holds {dim}-dim rows")


def pad_missing(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen results to k columns with id -1 / similarity -inf."""
    missing = k - sims.shape[1]
    if missing <= 0:
        return sims, ids
    sims = np.pad(sims, ((0, 0), (0, missing)), constant_values=-np.inf)
    ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
    return sims, ids
