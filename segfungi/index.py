"""Nearest-neighbour search over memory-bank features by cosine similarity.

Both indexes L2-normalise the bank and the queries (idempotent on features that are
already normalised; a FUNGI feature, the concatenation of two normalised halves, has
norm sqrt(2) and so gets cosine similarities in [-1, 1] rather than [-2, 2], which is
what the softmax temperature of the label transfer expects).

`search(queries, k)` returns `(sims float32 Q×k, ids int64 Q×k)`, best first. When
fewer than k neighbours exist (a bank smaller than k, or ScaNN leaves holding fewer
than k points) the missing columns hold id -1 and similarity -inf, so a softmax gives
them weight 0.

* `ExactIndex`: brute-force matmul + top-k in torch, chunked over queries and bank
  rows so that a 10^6×768 bank needs its own 3 GB plus one bounded similarity block.
* `ScannIndex`: ScaNN tree + asymmetric hashing + exact reordering (paper settings).
  The quantiser is trained on at most `training_sample` rows drawn with `seed`; a
  bigger bank is then added in chunks with ScaNN's `upsert`, so no second float32
  copy of the whole bank is ever made on our side.
* Deterministic builds: the same rows and settings give byte-identical index files
  in any process on any machine. ScaNN's random k-means initialisation is not (the
  centres come out in a per-process order: the same leaves under other numbers), so
  the tree is initialised with k-means++ (ScaNN's own, seeded, default), and training
  runs on `training_threads` threads (1 by default, so no reduction order can depend
  on the machine's core count).
* ScaNN's C++ start-up and training log lines (absl) are kept off the terminal unless
  verbose output is asked for (`segfungi --verbose`, `segfungi.logging_setup.set_verbose`): the file descriptor 2 is pointed at a
  temporary file while ScaNN trains, adds or loads, and the captured text is shown if
  the call fails.

Saved indexes are folders with `segfungi_index.json` (written last, so a folder
without it is an interrupted save) and `.npy`/`.pb` files; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segfungi import logging_setup
from segfungi.errors import BankError, ConfigError

INDEX_FORMAT_VERSION = 1
META_FILE = "segfungi_index.json"
ROW_IDS_FILE = "row_ids.npy"
EXACT_FEATURES_FILE = "features.npy"

# Rows converted to float32 at a time (float16 memmaps are never converted whole).
CONVERT_CHUNK_ROWS = 65536
# Largest query×bank similarity block ExactIndex materialises (2^24 floats = 64 MB).
EXACT_BLOCK_ELEMENTS = 1 << 24
EXACT_QUERY_CHUNK = 1024
# Rows per ScaNN worker batch, for parallel searches and for upserts.
SCANN_QUERY_BATCH = 256
REORDER_DTYPES = ("float32", "bfloat16", "int8")


@dataclass(frozen=True)
class IndexSettings:
    """Index settings; field names match the `index:` section of configs/defaults.yaml.

    Defaults are the paper's (Hummingbird) ScaNN settings. `min_leaf_size` clamps the
    number of leaves for small banks or small training samples:
    leaves = min(num_leaves, min(N, training_sample) // min_leaf_size), so k-means
    trains every leaf on ~100 points or more on average and a leaf holds enough
    points for a k of 30-90 (512 leaves are kept from 51,200 points up; the paper's
    smallest bank, 102,400, is unaffected). Fewer than 2 leaves means no tree at all
    (asymmetric hashing over every point).
    """

    kind: str = "auto"  # auto | scann | exact
    exact_below: int = 20000  # auto: exact search below this many bank rows
    num_leaves: int = 512
    num_leaves_to_search: int = 32
    reorder: int = 120  # 0 = no exact reordering
    # float32 (paper) | bfloat16 | int8: the copy of the bank ScaNN reorders with;
    # int8 needs 1/4 of the memory (2·10^7×768 rows: 15 GB instead of 61 GB).
    reorder_dtype: str = "float32"
    dims_per_block: int = 4
    anisotropic_threshold: float = 0.2
    training_sample: int = 250000  # rows the tree (k-means) is trained on
    ah_training_sample: int = 100000  # of those, rows the hashing codebooks see (ScaNN default)
    min_leaf_size: int = 100
    seed: int = 0  # draws the training sample
    # Threads ScaNN trains with; 0 = all cores (faster, but the files may then depend
    # on the machine). Not part of what the index computes, only of how.
    training_threads: int = 1

    def few_shot(self) -> "IndexSettings":
        """The paper's few-shot search: 256 leaves searched, reorder 1800."""
        return dataclasses.replace(self, num_leaves_to_search=256, reorder=1800)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "IndexSettings":
        return _with_overrides(cls(), values or {})


def _with_overrides(settings: IndexSettings, overrides: dict[str, Any]) -> IndexSettings:
    known = {f.name for f in dataclasses.fields(IndexSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"index: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(known))})"
        )
    settings = dataclasses.replace(settings, **overrides)
    if settings.kind not in ("auto", "scann", "exact"):
        raise ConfigError(f"index.kind must be auto, scann or exact, got {settings.kind!r}")
    if not isinstance(settings.training_threads, int) or settings.training_threads < 0:
        raise ConfigError(
            f"index.training_threads must be an integer >= 0 (0 = all cores), got {settings.training_threads!r}"
        )
    if settings.reorder_dtype not in REORDER_DTYPES:
        raise ConfigError(
            f"index.reorder_dtype must be one of {', '.join(REORDER_DTYPES)}, "
            f"got {settings.reorder_dtype!r}"
        )
    return settings


# ---------------------------------------------------------------------------- helpers


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



def _as_array(features: Any) -> Any:
    """A row-sliceable array: numpy arrays and memmaps stay as they are (not loaded)."""
    if isinstance(features, torch.Tensor):
        return features.detach().cpu().numpy()
    if not hasattr(features, "shape") or len(features.shape) != 2:
        features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array (rows × dim), got shape {features.shape}")
    return features


def _normalized_float32(rows: Any) -> np.ndarray:
    """Rows as C-contiguous float32 with unit L2 norm (all-zero rows stay zero)."""
    rows = np.array(rows, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows /= np.maximum(norms, 1e-12)
    return rows


def _row_chunks(num_rows: int, chunk: int = CONVERT_CHUNK_ROWS):
    for start in range(0, num_rows, chunk):
        yield start, min(start + chunk, num_rows)


def _check_search_args(queries: Any, dim: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if queries.shape[1] != dim:
        raise ValueError(f"queries have {queries.shape[1]} dims, the index holds {dim}-dim rows")


def _pad_missing(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen results to k columns with id -1 / similarity -inf."""
    missing = k - sims.shape[1]
    if missing <= 0:
        return sims, ids
    sims = np.pad(sims, ((0, 0), (0, missing)), constant_values=-np.inf)
    ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
    return sims, ids


def _write_meta(folder: Path, meta: dict) -> None:
    (folder / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _read_meta(folder: Path, kind: str | None = None) -> dict:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise BankError(f"{folder}: not a saved index (no {META_FILE}; interrupted save?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BankError(f"{path}: not valid JSON: {err}") from None
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise BankError(
            f"{path}: index format {meta.get('format_version')!r}, "
            f"this segfungi reads {INDEX_FORMAT_VERSION}; rebuild the index"
        )
    if kind is not None and meta.get("kind") != kind:
        raise BankError(f"{path}: holds a {meta.get('kind')!r} index, expected {kind!r}")
    return meta


def _load_npy(path: Path, **kwargs) -> np.ndarray:
    if not path.is_file():
        raise BankError(f"{path}: missing; the saved index is incomplete")
    return np.load(path, allow_pickle=False, **kwargs)


# ---------------------------------------------------------------------------- exact


class ExactIndex:
    """Brute-force cosine search; the reference ScaNN's recall is measured against."""

    kind = "exact"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.bank: torch.Tensor | None = None  # N×D float32, rows unit-norm

    @property
    def num_vectors(self) -> int:
        return 0 if self.bank is None else self.bank.shape[0]

    def build(self, features: Any) -> "ExactIndex":
        features = _as_array(features)
        bank = torch.empty(features.shape, dtype=torch.float32, device=self.device)
        for start, stop in _row_chunks(features.shape[0]):
            bank[start:stop] = torch.from_numpy(_normalized_float32(features[start:stop]))
        self.bank = bank
        return self

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        bank = self._require_built()
        queries = _as_array(queries)
        _check_search_args(queries, bank.shape[1], k)
        k_found = min(k, bank.shape[0])
        sims = np.empty((queries.shape[0], k_found), dtype=np.float32)
        ids = np.empty((queries.shape[0], k_found), dtype=np.int64)
        for start, stop in _row_chunks(queries.shape[0], EXACT_QUERY_CHUNK):
            block = torch.from_numpy(_normalized_float32(queries[start:stop])).to(self.device)
            chunk_sims, chunk_ids = self._top_k(block, k_found)
            sims[start:stop] = chunk_sims.cpu().numpy()
            ids[start:stop] = chunk_ids.cpu().numpy()
        return _pad_missing(sims, ids, k)

    def _top_k(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Running top-k over bank chunks, so only one Q×chunk block exists at a time."""
        bank = self.bank
        chunk = max(k, EXACT_BLOCK_ELEMENTS // max(1, queries.shape[0]))
        best_sims = torch.full((queries.shape[0], 0), -math.inf, device=self.device)
        best_ids = torch.zeros((queries.shape[0], 0), dtype=torch.int64, device=self.device)
        for start in range(0, bank.shape[0], chunk):
            block_sims = queries @ bank[start : start + chunk].T
            top_sims, top_cols = block_sims.topk(min(k, block_sims.shape[1]), dim=1)
            merged_sims = torch.cat([best_sims, top_sims], dim=1)
            merged_ids = torch.cat([best_ids, top_cols + start], dim=1)
            best_sims, order = merged_sims.topk(min(k, merged_sims.shape[1]), dim=1)
            best_ids = merged_ids.gather(1, order)
        return best_sims, best_ids

    def save(self, folder: str | Path) -> Path:
        """Writes the normalised float32 bank (bit-identical round trip).

        An exact index costs no more to rebuild than to load, so a memory bank
        normally rebuilds it from its features instead of saving it; this exists so
        both index kinds share one interface.
        """
        bank = self._require_built()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)  # an interrupted overwrite stays invalid
        np.save(folder / EXACT_FEATURES_FILE, bank.cpu().numpy(), allow_pickle=False)
        _write_meta(folder, self._meta())
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ExactIndex":
        folder = Path(folder)
        meta = _read_meta(folder, cls.kind)
        bank = _load_npy(folder / EXACT_FEATURES_FILE)
        if bank.dtype != np.float32 or list(bank.shape) != [meta["num_vectors"], meta["dim"]]:
            raise BankError(
                f"{folder}: {EXACT_FEATURES_FILE} ({bank.dtype}, {bank.shape}) disagrees with {META_FILE}"
            )
        index = cls(device=device)
        # Already normalised when saved; normalising again could move the last bit.
        index.bank = torch.from_numpy(bank).to(index.device)
        return index

    def _meta(self) -> dict:
        return {
            "format_version": INDEX_FORMAT_VERSION,
            "kind": self.kind,
            "num_vectors": self.num_vectors,
            "dim": int(self.bank.shape[1]),
        }

    def _require_built(self) -> torch.Tensor:
        if self.bank is None:
            raise RuntimeError("ExactIndex.search/save called before build()")
        return self.bank


# ---------------------------------------------------------------------------- ScaNN


@contextlib.contextmanager
def quiet_native_logs():
    """Points file descriptor 2 (where absl logs) at a temporary file for the block.

    Python-level sys.stderr is flushed first so nothing of ours is lost or reordered;
    if the block raises, the captured lines are written out, since they may explain
    the failure. A no-op when verbose or when stderr has no file descriptor."""
    if logging_setup.verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            captured = sink.read().decode("utf-8", errors="replace")
            if captured.strip():
                sys.stderr.write(captured)
                sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _scann_module():
    # Imported lazily: exact-only users (and the CLI's --help) need not load ScaNN.
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def clamped_num_leaves(num_vectors: int, settings: IndexSettings) -> int:
    """Leaves actually used: the paper's count, fewer for small banks (see IndexSettings)."""
    trained_on = min(num_vectors, settings.training_sample)
    return int(min(settings.num_leaves, trained_on // max(1, settings.min_leaf_size)))


class ScannIndex:
    """ScaNN dot-product search on unit-norm rows (paper settings by default).

    With reorder_dtype float32 the returned similarities are exact dot products of
    the normalised rows; with bfloat16 / int8 they are ScaNN's quantised estimates.
    """

    kind = "scann"

    def __init__(self, settings: IndexSettings | None = None, **overrides: Any):
        self.settings = _with_overrides(settings or IndexSettings(), overrides)
        self.searcher = None
        self.num_vectors = 0
        self.dim = 0
        self.num_leaves = 0  # after clamping; 0 = no tree
        # ScaNN's position -> bank row; None when they are the same (no upserts).
        self.row_ids: np.ndarray | None = None

    def build(self, features: Any) -> "ScannIndex":
        features = _as_array(features)
        num_rows = features.shape[0]
        if num_rows < 16:
            # Asymmetric hashing trains 16 centres per block.
            raise ValueError(f"ScannIndex needs 16 vectors or more, got {num_rows}; use ExactIndex")
        in_sample = self._training_rows(num_rows)
        sample_rows = features[:] if in_sample.all() else features[np.flatnonzero(in_sample)]
        sample = _normalized_float32(sample_rows)
        del sample_rows
        self.num_vectors, self.dim = num_rows, features.shape[1]
        self.num_leaves = clamped_num_leaves(num_rows, self.settings)
        with quiet_native_logs():
            self.searcher = self._builder(sample).build()
        del sample
        if not in_sample.all():
            self._add_remaining_rows(features, in_sample)
        return self

    def _training_rows(self, num_rows: int) -> np.ndarray:
        """Boolean mask of the rows the quantiser is trained on (seeded draw)."""
        in_sample = np.zeros(num_rows, dtype=bool)
        if num_rows <= self.settings.training_sample:
            in_sample[:] = True
        else:
            rng = np.random.default_rng(self.settings.seed)
            in_sample[rng.choice(num_rows, self.settings.training_sample, replace=False)] = True
        return in_sample

    def _builder(self, sample: np.ndarray):
        settings = self.settings
        builder = _scann_module().builder(sample, 10, "dot_product")
        builder.set_n_training_threads(settings.training_threads)
        if self.num_leaves >= 2:
            builder = builder.tree(
                num_leaves=self.num_leaves,
                num_leaves_to_search=min(settings.num_leaves_to_search, self.num_leaves),
                training_sample_size=sample.shape[0],
                # k-means++ (seeded by ScaNN's clustering_seed): random initialisation
                # numbers the leaves differently in every process (see module docstring).
                random_init=False,
            )
        builder = builder.score_ah(
            settings.dims_per_block,
            anisotropic_quantization_threshold=settings.anisotropic_threshold,
            training_sample_size=min(sample.shape[0], settings.ah_training_sample),
        )
        if settings.reorder > 0:
            from scann.scann_ops.py.scann_builder import ReorderType

            reorder_type = ReorderType[settings.reorder_dtype.upper()]
            builder = builder.reorder(settings.reorder, quantize=reorder_type)
        return builder

    def _add_remaining_rows(self, features: Any, in_sample: np.ndarray) -> None:
        """Upserts the rows outside the training sample in contiguous chunks.

        The ScaNN wrapper's `upsert` insists on Python docids (pickled on save), so the
        pybind searcher is called directly: `None` index = append a new point.
        """
        self.searcher.reserve(self.num_vectors)
        added = [np.flatnonzero(in_sample)]
        for start, stop in _row_chunks(self.num_vectors):
            keep = ~in_sample[start:stop]
            if not keep.any():
                continue
            rows = _normalized_float32(features[start:stop][keep])
            with quiet_native_logs():
                self.searcher.searcher.upsert([None] * rows.shape[0], rows, SCANN_QUERY_BATCH)
            added.append(start + np.flatnonzero(keep))
        self.row_ids = np.concatenate(added).astype(np.int64)
        if self.searcher.size() != self.num_vectors:
            raise RuntimeError(f"ScaNN holds {self.searcher.size()} rows, expected {self.num_vectors}")

    def search(
        self,
        queries: Any,
        k: int,
        *,
        num_leaves_to_search: int | None = None,
        reorder: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine; the keyword arguments override the settings for this call
        (e.g. the few-shot 256 / 1800 on an index built with the default settings)."""
        if self.searcher is None:
            raise RuntimeError("ScannIndex.search called before build() or load()")
        if num_leaves_to_search is None:
            num_leaves_to_search = self.settings.num_leaves_to_search
        reorder = self.settings.reorder if reorder is None else reorder
        queries = _as_array(queries)
        _check_search_args(queries, self.dim, k)
        sims = np.empty((queries.shape[0], k), dtype=np.float32)
        ids = np.empty((queries.shape[0], k), dtype=np.int64)
        for start, stop in _row_chunks(queries.shape[0]):
            found_ids, found_sims = self.searcher.search_batched_parallel(
                _normalized_float32(queries[start:stop]),
                final_num_neighbors=k,
                pre_reorder_num_neighbors=max(reorder, k) if reorder > 0 else k,
                leaves_to_search=self._leaves_to_search(num_leaves_to_search),
                batch_size=SCANN_QUERY_BATCH,
            )
            sims[start:stop], ids[start:stop] = self._as_bank_results(found_sims, found_ids, k)
        return sims, ids

    def _leaves_to_search(self, requested: int) -> int | None:
        return min(requested, self.num_leaves) if self.num_leaves >= 2 else None  # None: no tree

    def _as_bank_results(self, sims: np.ndarray, ids: np.ndarray, k: int):
        # ScaNN pads missing neighbours with id 0 and NaN distance.
        sims, ids = _pad_missing(np.asarray(sims, np.float32), np.asarray(ids, np.int64), k)
        missing = np.isnan(sims)
        if self.row_ids is not None:
            ids = self.row_ids[ids]
        ids[missing] = -1
        sims[missing] = -np.inf
        return sims, ids

    def save(self, folder: str | Path) -> Path:
        if self.searcher is None:
            raise RuntimeError("ScannIndex.save called before build()")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)  # an interrupted overwrite stays invalid
        # relative_path: the asset list names files relative to the folder, so a bank
        # folder can be moved or copied to another machine.
        with quiet_native_logs():
            self.searcher.serialize(str(folder), relative_path=True)
        if self.row_ids is not None:
            np.save(folder / ROW_IDS_FILE, self.row_ids, allow_pickle=False)
        _write_meta(folder, self._meta())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ScannIndex":
        """Reads a saved index without unpickling anything.

        `scann_ops_pybind.load_searcher` would unpickle `scann_docids.pkl` if the
        folder held one (we never write it), so the pybind searcher is constructed
        here from the asset list directly; ScaNN's C++ side reads the .npy/.pb files.
        """
        folder = Path(folder)
        meta = _read_meta(folder, cls.kind)
        assets = folder / "scann_assets.pbtxt"
        if not assets.is_file():
            raise BankError(f"{assets}: missing; the saved index is incomplete")
        assets_text = assets.read_text(encoding="utf-8", errors="replace")
        _check_asset_paths(folder, assets_text)
        index = cls(IndexSettings.from_dict(meta["settings"]))
        module = _scann_module()
        with quiet_native_logs():
            native = module.scann_pybind.ScannNumpy(str(folder), assets_text)
        index.searcher = module.ScannSearcher(native)
        index.num_vectors, index.dim, index.num_leaves = (
            meta["num_vectors"], meta["dim"], meta["num_leaves"],
        )
        if meta["has_row_ids"]:
            index.row_ids = _load_npy(folder / ROW_IDS_FILE)
        if index.searcher.size() != index.num_vectors:
            raise BankError(
                f"{folder}: ScaNN holds {index.searcher.size()} rows, "
                f"{META_FILE} says {index.num_vectors}"
            )
        return index

    def _meta(self) -> dict:
        return {
            "format_version": INDEX_FORMAT_VERSION,
            "kind": self.kind,
            "num_vectors": self.num_vectors,
            "dim": self.dim,
            "num_leaves": self.num_leaves,
            "has_row_ids": self.row_ids is not None,
            "settings": dataclasses.asdict(self.settings),
        }


def _check_asset_paths(folder: Path, assets_text: str) -> None:
    """ScaNN reads the files its asset list names: only plain files inside `folder`
    (as `serialize(relative_path=True)` writes them) are accepted, never a path
    elsewhere on the machine."""
    import re

    paths = re.findall(r'asset_path:\s*"([^"]*)"', assets_text)
    if not paths:
        raise BankError(f"{folder / 'scann_assets.pbtxt'}: lists no assets; the saved index is damaged")
    for name in paths:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name in (".", ".."):
            raise BankError(f"{folder / 'scann_assets.pbtxt'}: asset path {name!r} is not a file in the "
                            "index folder (refused)")
        if not (folder / name).is_file():
            raise BankError(f"{folder / name}: missing; the saved index is incomplete")


# ---------------------------------------------------------------------------- entry points


def make_index(
    features: Any, settings: IndexSettings | dict | None = None, *, device: str | torch.device = "cpu",
    **overrides: Any,
) -> ExactIndex | ScannIndex:
    """Builds the index `kind` asks for; `auto` = exact below `exact_below` rows.

    `make_index(features, **config["index"])` works: every config key is a setting.
    `device` (e.g. `backbone.device`) is where an exact index keeps the bank and runs
    its matmul + top-k; ScaNN always runs on the CPU.
    """
    if isinstance(settings, dict):
        settings = IndexSettings.from_dict(settings)
    settings = _with_overrides(settings or IndexSettings(), overrides)
    features = _as_array(features)
    kind = settings.kind
    if kind == "auto":
        kind = "exact" if features.shape[0] < settings.exact_below else "scann"
    if kind == "exact":
        return ExactIndex(device).build(features)
    return ScannIndex(settings).build(features)


def load_index(folder: str | Path) -> ExactIndex | ScannIndex:
    """Loads whichever kind of index `folder` holds."""
    kind = _read_meta(Path(folder)).get("kind")
    if kind == ExactIndex.kind:
        return ExactIndex.load(folder)
    if kind == ScannIndex.kind:
        return ScannIndex.load(folder)
    raise BankError(f"{folder}: unknown index kind {kind!r}")


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact top-k found in the approximate top-k.

    Padding ids (-1) in the exact results are not counted as neighbours to find.
    """
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(f"{approx_ids.shape[0]} approximate vs {exact_ids.shape[0]} exact rows")
    found = np.zeros(exact_ids.shape[0])
    for start, stop in _row_chunks(exact_ids.shape[0], 4096):
        exact, approx = exact_ids[start:stop], approx_ids[start:stop]
        hits = (exact[:, :, None] == approx[:, None, :]).any(axis=2) & (exact >= 0)
        found[start:stop] = hits.sum(axis=1) / np.maximum((exact >= 0).sum(axis=1), 1)
    return float(found.mean()) if found.size else float("nan")
