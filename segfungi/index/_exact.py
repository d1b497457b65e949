"""Brute-force cosine search in torch (the reference ScaNN's recall is measured against)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segfungi.index import _files
from segfungi.index._registry import IndexCosts, IndexJob, IndexKind
from segfungi.index._rows import as_array, check_search_args, normalized_float32, pad_missing, row_chunks
from segfungi.infra.errors import BankError

EXACT_FEATURES_FILE = "features.npy"
# Largest query×bank similarity block ExactIndex materialises (2^24 floats = 64 MB).
EXACT_BLOCK_ELEMENTS = 1 << 24
EXACT_QUERY_CHUNK = 1024


class ExactIndex:
    """Brute-force cosine search; the reference ScaNN's recall is measured against."""

    kind = "exact"
    # Class attributes so a test can shrink the blocks (chunking must not change results).
    block_elements = EXACT_BLOCK_ELEMENTS
    query_chunk = EXACT_QUERY_CHUNK

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.bank: torch.Tensor | None = None  # N×D float32, rows unit-norm

    @property
    def num_vectors(self) -> int:
        return 0 if self.bank is None else self.bank.shape[0]

    def build(self, features: Any) -> "ExactIndex":
        features = as_array(features)
        bank = torch.empty(features.shape, dtype=torch.float32, device=self.device)
        for start, stop in row_chunks(features.shape[0]):
            bank[start:stop] = torch.from_numpy(normalized_float32(features[start:stop]))
        self.bank = bank
        return self

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        bank = self._require_built()
        queries = as_array(queries)
        check_search_args(queries, bank.shape[1], k)
        k_found = min(k, bank.shape[0])
        sims = np.empty((queries.shape[0], k_found), dtype=np.float32)
        ids = np.empty((queries.shape[0], k_found), dtype=np.int64)
        for start, stop in row_chunks(queries.shape[0], self.query_chunk):
            block = torch.from_numpy(normalized_float32(queries[start:stop])).to(self.device)
            chunk_sims, chunk_ids = self._top_k(block, k_found)
            sims[start:stop] = chunk_sims.cpu().numpy()
            ids[start:stop] = chunk_ids.cpu().numpy()
        return pad_missing(sims, ids, k)

    def _top_k(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Running top-k over bank chunks, so only one Q×chunk block exists at a time."""
        bank = self.bank
        chunk = max(k, self.block_elements // max(1, queries.shape[0]))
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
        (folder / _files.META_FILE).unlink(missing_ok=True)  # an interrupted overwrite stays invalid
        np.save(folder / EXACT_FEATURES_FILE, bank.cpu().numpy(), allow_pickle=False)
        _files.write_meta(folder, self._meta())
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ExactIndex":
        folder = Path(folder)
        meta = _files.read_meta(folder, cls.kind)
        bank = _files.load_npy(folder / EXACT_FEATURES_FILE)
        if bank.dtype != np.float32 or list(bank.shape) != [meta["num_vectors"], meta["dim"]]:
            raise BankError(
                f"{folder}: {EXACT_FEATURES_FILE} ({bank.dtype}, {bank.shape}) disagrees with {_files.META_FILE}"
            )
        index = cls(device=device)
        # Already normalised when saved; normalising again could move the last bit.
        index.bank = torch.from_numpy(bank).to(index.device)
        return index

    def _meta(self) -> dict:
        return _files.meta_header(self.kind, self.num_vectors, self.bank.shape[1])

    def _require_built(self) -> torch.Tensor:
        if self.bank is None:
            raise RuntimeError("ExactIndex.search/save called before build()")
        return self.bank


def exact_costs(job: IndexJob) -> IndexCosts:
    """Nothing on disk; the float32 bank where it searches; a matmul over every row per query."""
    device, dim = job.on, job.dim or 0
    resident = job.rows * dim * 4
    flops = device.float_flops
    return IndexCosts(host_memory=0 if device.is_gpu else resident, device_memory=resident if device.is_gpu else 0,
                      seconds_per_query=job.rows * dim * 2 / flops)


def below_exact_threshold(job: IndexJob) -> bool:
    return job.rows < job.settings.exact_below


# Registered as "exact" by segfungi.index._registry, which imports this module on first use.
INDEX_KIND = IndexKind(
    ExactIndex.kind,
    build=lambda features, settings, device: ExactIndex(device).build(features),
    load=ExactIndex.load,
    saved=False,  # a bank's exact index is only its features: rebuilt from them when searched
    options=("exact_below",),
    auto_rank=10,
    applies=below_exact_threshold,
    costs=exact_costs,
)
