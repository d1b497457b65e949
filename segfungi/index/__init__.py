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
  verbose output is asked for (`segfungi --verbose`, `segfungi.infra.logging_setup.set_verbose`): the file descriptor 2 is pointed at a
  temporary file while ScaNN trains, adds or loads, and the captured text is shown if
  the call fails.

Saved indexes are folders with `segfungi_index.json` (written last, so a folder
without it is an interrupted save) and `.npy`/`.pb` files; nothing is pickled.

Index kinds are registered (`register_index_kind`): `make_index`, `load_index`, the
`index.kind` setting's choices and the CLI's `--index` read the registry, so a new kind is
one registration. The package's modules: _settings (IndexSettings), _registry (the
kinds), _register (register_index_kind), _make (make_index, load_index), _rows (ConcatRows and row helpers), _files (the
saved folder), _exact, _scann, _recall (recall_at_k). Names are imported when first
used, so the registry (`index_kinds()`) loads no torch.
"""

from __future__ import annotations

from segfungi.infra.lazy import lazy_exports

# Internal module -> the public names it defines.
_MODULES = {
    "._settings": ("DEVICE_DTYPES", "REORDER_DTYPES", "IndexSettings"),
    "._registry": ("IndexCosts", "IndexJob", "IndexKind", "index_costs", "index_kind", "index_kinds"),
    "._register": ("register_index_kind", "unregister_index_kind"),
    "._device": ("DESCRIBED", "DeviceInfo", "device_info"),
    "._device_exact": ("DeviceExactIndex",),
    "._make": ("make_index", "load_index"),
    "._rows": ("CONVERT_CHUNK_ROWS", "ConcatRows"),
    "._files": ("INDEX_FORMAT_VERSION", "META_FILE"),
    "._exact": ("EXACT_BLOCK_ELEMENTS", "EXACT_QUERY_CHUNK", "ExactIndex"),
    "._scann": ("SCANN_QUERY_BATCH", "ScannIndex", "clamped_num_leaves", "quiet_native_logs"),
    "._recall": ("recall_at_k",),
}
_PUBLIC = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
