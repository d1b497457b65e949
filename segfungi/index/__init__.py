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

Index kinds are registered (`register_index_kind`): `make_index`, `load_index` and the
`index.kind` check read the registry, so a new kind is one registration. The package's
modules: _settings (IndexSettings), _registry (the kinds), _rows (ConcatRows and row
helpers), _files (the saved folder), _exact, _scann, _recall (recall_at_k).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segfungi.index import _files
from segfungi.index._exact import EXACT_BLOCK_ELEMENTS, EXACT_QUERY_CHUNK, ExactIndex
from segfungi.index._files import INDEX_FORMAT_VERSION, META_FILE
from segfungi.index._recall import recall_at_k
from segfungi.index._registry import (
    IndexKind,
    index_kind,
    index_kinds,
    register_index_kind,
    saved_index_kind,
    unregister_index_kind,
)
from segfungi.index._rows import CONVERT_CHUNK_ROWS, ConcatRows, as_array
from segfungi.index._scann import SCANN_QUERY_BATCH, ScannIndex, clamped_num_leaves, quiet_native_logs
from segfungi.index._settings import REORDER_DTYPES, IndexSettings, with_overrides

__all__ = [
    "CONVERT_CHUNK_ROWS",
    "EXACT_BLOCK_ELEMENTS",
    "EXACT_QUERY_CHUNK",
    "INDEX_FORMAT_VERSION",
    "META_FILE",
    "REORDER_DTYPES",
    "SCANN_QUERY_BATCH",
    "ConcatRows",
    "ExactIndex",
    "IndexKind",
    "IndexSettings",
    "ScannIndex",
    "clamped_num_leaves",
    "index_kinds",
    "load_index",
    "make_index",
    "quiet_native_logs",
    "recall_at_k",
    "register_index_kind",
    "unregister_index_kind",
]


def make_index(
    features: Any, settings: IndexSettings | dict | None = None, *, device: str | torch.device = "cpu",
    **overrides: Any,
):
    """Builds the index `kind` asks for; `auto` = exact below `exact_below` rows, else ScaNN.

    `make_index(features, **config["index"])` works: every config key is a setting.
    `device` (e.g. `backbone.device`) is where an exact index keeps the bank and runs
    its matmul + top-k; ScaNN always runs on the CPU.
    """
    if isinstance(settings, dict):
        settings = IndexSettings.from_dict(settings)
    settings = with_overrides(settings or IndexSettings(), overrides)
    features = as_array(features)
    kind = settings.kind
    if kind == "auto":
        kind = ExactIndex.kind if features.shape[0] < settings.exact_below else ScannIndex.kind
    return index_kind(kind).build(features, settings, device)


def load_index(folder: str | Path):
    """Loads whichever kind of index `folder` holds."""
    kind = _files.read_meta(Path(folder)).get("kind")
    return saved_index_kind(folder, kind).load(folder)
