"""ScaNN search (tree + asymmetric hashing + exact reordering) and its quiet native logs."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from segfungi.index import _files
from segfungi.index._registry import IndexCosts, IndexJob, IndexKind
from segfungi.index._rows import as_array, check_search_args, normalized_float32, pad_missing, row_chunks
from segfungi.index._settings import IndexSettings, with_overrides
from segfungi.infra import logging_setup
from segfungi.infra.errors import BankError

ROW_IDS_FILE = "row_ids.npy"
# Rows per ScaNN worker batch, for parallel searches and for upserts.
SCANN_QUERY_BATCH = 256


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
        self.settings = with_overrides(settings or IndexSettings(), overrides)
        self.searcher = None
        self.num_vectors = 0
        self.dim = 0
        self.num_leaves = 0  # after clamping; 0 = no tree
        # ScaNN's position -> bank row; None when they are the same (no upserts).
        self.row_ids: np.ndarray | None = None

    def build(self, features: Any) -> "ScannIndex":
        features = as_array(features)
        num_rows = features.shape[0]
        if num_rows < 16:
            # Asymmetric hashing trains 16 centres per block.
            raise ValueError(f"ScannIndex needs 16 vectors or more, got {num_rows}; use ExactIndex")
        in_sample = self._training_rows(num_rows)
        sample_rows = features[:] if in_sample.all() else features[np.flatnonzero(in_sample)]
        sample = normalized_float32(sample_rows)
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
        for start, stop in row_chunks(self.num_vectors):
            keep = ~in_sample[start:stop]
            if not keep.any():
                continue
            rows = normalized_float32(features[start:stop][keep])
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
        queries = as_array(queries)
        check_search_args(queries, self.dim, k)
        sims = np.empty((queries.shape[0], k), dtype=np.float32)
        ids = np.empty((queries.shape[0], k), dtype=np.int64)
        for start, stop in row_chunks(queries.shape[0]):
            found_ids, found_sims = self.searcher.search_batched_parallel(
                normalized_float32(queries[start:stop]),
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
        sims, ids = pad_missing(np.asarray(sims, np.float32), np.asarray(ids, np.int64), k)
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
        (folder / _files.META_FILE).unlink(missing_ok=True)  # an interrupted overwrite stays invalid
        # relative_path: the asset list names files relative to the folder, so a bank
        # folder can be moved or copied to another machine.
        with quiet_native_logs():
            self.searcher.serialize(str(folder), relative_path=True)
        if self.row_ids is not None:
            np.save(folder / ROW_IDS_FILE, self.row_ids, allow_pickle=False)
        _files.write_meta(folder, self._meta())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ScannIndex":
        """Reads a saved index without unpickling anything.

        `scann_ops_pybind.load_searcher` would unpickle `scann_docids.pkl` if the
        folder held one (we never write it), so the pybind searcher is constructed
        here from the asset list directly; ScaNN's C++ side reads the .npy/.pb files.
        """
        folder = Path(folder)
        meta = _files.read_meta(folder, cls.kind)
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
            index.row_ids = _files.load_npy(folder / ROW_IDS_FILE)
        if index.searcher.size() != index.num_vectors:
            raise BankError(
                f"{folder}: ScaNN holds {index.searcher.size()} rows, "
                f"{_files.META_FILE} says {index.num_vectors}"
            )
        return index

    def _meta(self) -> dict:
        return {
            **_files.meta_header(self.kind, self.num_vectors, self.dim),
            "num_leaves": self.num_leaves,
            "has_row_ids": self.row_ids is not None,
            "settings": self.settings.record(),
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


GIB = 1 << 30
# Python, torch, ScaNN and the 250,000-row training sample while a ScaNN index is built.
SCANN_BUILD_FIXED_BYTES = int(2.4 * GIB)
REORDER_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


def scann_costs(job: IndexJob) -> IndexCosts:
    """Estimates from benchmarks/bench_index.py and bench_bank_memory.py on a 2-core CPU
    (benchmarks/README.md): files hold D·(4 | 2 | 1) bytes per row of float32 | bfloat16 |
    int8 reordering copy, one byte per asymmetric-hashing block and a 4-byte id, plus the
    tree and codebooks; in memory D/4 bytes of codes and 15 more per row; the build adds
    ≈ 2.4 GiB. Build: 24 s at 10⁵ × 768 rows, 86 s at 10⁶. Search (reorder 120, 32 leaves):
    18,000 queries/s at 10⁵ × 768 rows, 4,000 at 10⁶; the few-shot search (256 leaves,
    reorder 1800) ≈ 10× slower."""
    settings, rows, dim = job.settings, job.rows, job.dim or 0
    reorder = REORDER_BYTES[settings.reorder_dtype] if settings.reorder > 0 else 0
    blocks = -(-dim // max(1, settings.dims_per_block))
    disk = rows * (dim * reorder + blocks + 4) + (settings.num_leaves + 16) * dim * 4 + (1 << 20)
    resident = int(rows * (dim * REORDER_BYTES[settings.reorder_dtype] + dim / 4 + 15))
    per_query = (5.5e-5 + 2e-10 * rows) * dim / 768 * (10 if settings.reorder > 600 else 1)
    return IndexCosts(disk=disk, host_memory=resident, build_host_memory=SCANN_BUILD_FIXED_BYTES + resident,
                      build_seconds=(17 + 7e-5 * rows) * dim / 768, seconds_per_query=per_query)


# Registered as "scann" by segfungi.index._registry, which imports this module on first use.
INDEX_KIND = IndexKind(
    ScannIndex.kind,
    build=lambda features, settings, device: ScannIndex(settings).build(features),
    load=ScannIndex.load,
    options=("num_leaves", "num_leaves_to_search", "reorder", "reorder_dtype", "dims_per_block",
             "anisotropic_threshold", "training_sample", "ah_training_sample", "min_leaf_size", "seed",
             "training_threads"),
    auto_rank=30,
    costs=scann_costs,
)
