"""Exact search on the device: the bank in float16 or bfloat16, a float32 rescoring of a
margin of candidates, and a check that makes the result that of float32 exact search.

Rows x and queries q are L2-normalised in float32 (as `ExactIndex` does) and s = q·x.
The device holds the rows in the low dtype (unit roundoff u: 2⁻¹¹ float16, 2⁻⁸ bfloat16)
and computes ŝ = q̂·x̂ by matmul, chunked over queries and rows so that one similarity
block of at most `block_elements` exists at a time. With |q| = |x| = 1,

    |ŝ − s| ≤ ε = 4u + D·2⁻²²

(the two input roundings 2u, the rounded output u, float32 accumulation, and one u to
spare). Per query the C = k + margin rows of highest ŝ (a running top-C over row chunks)
are rescored against the float32 rows (products summed in float64, rounded to float32:
a score that does not depend on chunk sizes) and ordered by (s descending, id
ascending): lower ids first among equal scores. Let t̂ be the lowest ŝ among the
candidates. A row left out has ŝ ≤ t̂, so s ≤ t̂ + ε; when the k-th rescored score is
above t̂ + ε, no row left out can be in the top k or tie with it, and the answer is the
float32 exact one, tie order included. A query that fails this check is searched again
with four times the margin (at C ≥ rows every row is a candidate).

Where the float32 rows come from: a bank's shards hold float16 rows, so with
`device_dtype` float16 the device keeps those rows as they are plus their float32
norms, and a float32 row is `row.float() / norm` (the same division `ExactIndex` does):
no second copy. Otherwise (bfloat16, or float32 input) the normalised float32 rows stay
in host memory and the candidates' rows are copied over.

Sharding: the rows can be split over several devices (`devices`); each shard finds and
rescores its own candidates, and the shards' lists are merged on the first device (the
check then takes the highest t̂ + ε over the shards).

Memory on each device: its rows (2 bytes × D + 4 per row) and one block. Out of device
memory mid-search, the blocks are made four times smaller and the search is redone (the
same results); below 2¹⁶ entries it stops with a message naming the settings that help.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from segfungi.index._registry import IndexCosts, IndexJob, IndexKind
from segfungi.index._rows import as_array, check_search_args, pad_missing, row_chunks
from segfungi.index._settings import IndexSettings, with_overrides
from segfungi.infra.errors import ConfigError

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# Rows whose norm is above this are stored normalised (a raw float16 product could overflow).
RAW_NORM_LIMIT = 256.0
RETRY_GROWTH = 4
MIN_BLOCK_ELEMENTS = 1 << 16


def score_error_bound(dtype: torch.dtype, dim: int) -> float:
    """ε: the most a low-precision score of unit vectors can differ from the float32 one."""
    return 4 * UNIT_ROUNDOFF[dtype] + dim * 2.0**-22


class _Shard:
    """Rows [start, start + n) on one device, ready to give each query its rescored candidates."""

    def __init__(self, start: int, device: torch.device, dtype: torch.dtype):
        self.start, self.device, self.dtype = start, device, dtype
        self.low: torch.Tensor | None = None  # n×D in dtype: raw rows (with norms) or normalised rows
        self.norms: torch.Tensor | None = None  # n float32 when `low` holds raw rows
        self.exact: torch.Tensor | None = None  # n×D float32 normalised rows (host) otherwise

    @property
    def rows(self) -> int:
        return self.low.shape[0]

    def fill(self, features: Any, start: int, stop: int, raw: bool) -> None:
        """Copies rows start..stop of `features` (a row array, or a torch tensor, e.g. one
        already on the device: its norms are then computed by torch where it is); raw:
        keep the float16 rows and their norms."""
        n, dim = stop - start, features.shape[1]
        self.low = torch.empty((n, dim), dtype=self.dtype, device=self.device)
        if raw:
            self.norms = torch.empty(n, dtype=torch.float32, device=self.device)
        else:
            self.exact = torch.empty((n, dim), dtype=torch.float32)
            if self.device.type == "cuda":
                self.exact = self.exact.pin_memory()
        for a, b in row_chunks(n):
            rows = features[start + a : start + b]
            if isinstance(rows, torch.Tensor):
                norms = rows.float().norm(dim=1).clamp_min(1e-12)
            else:
                rows = np.asarray(rows)
                norms = np.maximum(np.linalg.norm(rows.astype(np.float32), axis=1), np.float32(1e-12))
                rows, norms = torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(norms.astype(np.float32))
            if raw:
                self.low[a:b] = rows.to(self.device)
                self.norms[a:b] = norms.to(self.device)
            else:
                unit = (rows.float() / norms.to(rows.device)[:, None]).cpu()
                self.exact[a:b] = unit
                self.low[a:b] = unit.to(self.device).to(self.dtype)

    def float_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised float32 rows of local `ids` (any shape), on this shard's device."""
        if self.norms is not None:
            return self.low[ids].float() / self.norms[ids].unsqueeze(-1)
        return self.exact[ids.cpu()].to(self.device, non_blocking=True)

    def low_scores(self, queries_low: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """ŝ of the queries against rows start..stop (float32, Q×(stop − start))."""
        scores = (queries_low @ self.low[start:stop].T).float()
        if self.norms is not None:
            scores /= self.norms[start:stop]
        return scores

    def candidates(self, queries: torch.Tensor, count: int, block_elements: int, epsilon: float):
        """(scores s, global ids, bound t̂ + ε per query) of each query's `count` rescored
        candidates; bound −inf when every row is a candidate."""
        queries = queries.to(self.device)
        num_queries = queries.shape[0]
        if count >= self.rows:
            local = torch.arange(self.rows, device=self.device).expand(num_queries, -1)
            bound = torch.full((num_queries,), -math.inf, device=self.device)
        else:
            local, bound = self._top_low(queries, count, block_elements)
            bound = bound + epsilon
        return self._rescore(queries, local, block_elements), local + self.start, bound

    def _top_low(self, queries: torch.Tensor, count: int, block_elements: int):
        """Running top-`count` by ŝ over row chunks; (local ids, lowest kept ŝ)."""
        queries_low = queries.to(self.dtype)
        chunk = max(count, block_elements // max(1, queries.shape[0]))
        best = torch.empty((queries.shape[0], 0), device=self.device)
        best_ids = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=self.device)
        with _full_precision_reductions():
            for start in range(0, self.rows, chunk):
                stop = min(start + chunk, self.rows)
                top, cols = self.low_scores(queries_low, start, stop).topk(min(count, stop - start), dim=1)
                merged, merged_ids = torch.cat([best, top], dim=1), torch.cat([best_ids, cols + start], dim=1)
                best, order = merged.topk(min(count, merged.shape[1]), dim=1)
                best_ids = merged_ids.gather(1, order)
        return best_ids, best[:, -1]

    def _rescore(self, queries: torch.Tensor, local: torch.Tensor, block_elements: int) -> torch.Tensor:
        """q·x of each query's candidates from the float32 rows, summed in float64 and rounded
        to float32: each score is then the same whatever the chunking or the number of
        shards (a batched matmul's reduction order depends on the shapes), and identical
        rows score identically. A bounded number of rows at a time."""
        num_queries, count = local.shape
        step = max(1, block_elements // max(1, count * queries.shape[1]))
        scores = torch.empty((num_queries, count), dtype=torch.float32, device=self.device)
        for start, stop in row_chunks(num_queries, step):
            rows = self.float_rows(local[start:stop])
            products = rows.double() * queries[start:stop, None, :].double()
            scores[start:stop] = products.sum(dim=-1).float()
        return scores


class _full_precision_reductions:
    """cuBLAS may sum float16/bfloat16 products in reduced precision (split-K); the error
    bound assumes float32 sums, so that is turned off while the block is computed."""

    FLAGS = ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction")

    def __enter__(self):
        matmul = torch.backends.cuda.matmul
        self.saved = {flag: getattr(matmul, flag) for flag in self.FLAGS if hasattr(matmul, flag)}
        for flag in self.saved:
            setattr(matmul, flag, False)

    def __exit__(self, *exc):
        for flag, value in self.saved.items():
            setattr(torch.backends.cuda.matmul, flag, value)


def ordered_top_k(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row by (score descending, id ascending)."""
    by_id = ids.argsort(dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), ids.gather(1, order)


class DeviceExactIndex:
    """Exact cosine search with the bank on the device in float16/bfloat16 (module docstring)."""

    kind = "device-exact"
    # Class attributes so a test can shrink the blocks (chunking must not change results).
    block_elements = 1 << 24  # similarity entries in one block on a CPU (64 MB of float32)
    gpu_block_elements = 1 << 28
    query_chunk = 8192

    def __init__(self, settings: IndexSettings | None = None, devices: Sequence[str | torch.device] = ("cpu",),
                 **overrides: Any):
        self.settings = with_overrides(settings or IndexSettings(), overrides)
        self.dtype = DTYPES[self.settings.device_dtype]
        self.devices = [torch.device(d) for d in (devices if not isinstance(devices, (str, torch.device))
                                                  else [devices])]
        self.shards: list[_Shard] = []
        self.dim = 0
        self.retries = 0  # queries searched again with a wider margin (for the probe's report)
        self.block_shrinks = 0  # times the device ran out of memory and the blocks were made smaller

    @property
    def num_vectors(self) -> int:
        return sum(shard.rows for shard in self.shards)

    @property
    def device(self) -> torch.device:
        return self.devices[0]

    def build(self, features: Any) -> "DeviceExactIndex":
        """Rows: any row array (a bank's float16 shards, numpy) or a torch tensor, which
        is read where it is (rows made on the GPU are never copied to the host)."""
        if not isinstance(features, torch.Tensor):
            features = as_array(features)
        elif features.ndim != 2:
            raise ValueError(f"features must be a 2-D array (rows × dim), got shape {tuple(features.shape)}")
        num_rows, self.dim = features.shape
        half = features.dtype in (np.float16, torch.float16)
        raw = half and self.dtype == torch.float16 and _norms_at_most(features, RAW_NORM_LIMIT)
        bounds = np.linspace(0, num_rows, len(self.devices) + 1).round().astype(int)
        self.shards = []
        for device, start, stop in zip(self.devices, bounds[:-1], bounds[1:]):
            shard = _Shard(int(start), device, self.dtype)
            shard.fill(features, int(start), int(stop), raw)
            self.shards.append(shard)
        return self

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine, numpy in and out (the interface every index has)."""
        self._require_built()
        queries = as_array(queries)
        check_search_args(queries, self.dim, k)
        sims = np.empty((queries.shape[0], min(k, self.num_vectors)), dtype=np.float32)
        ids = np.empty(sims.shape, dtype=np.int64)
        for start, stop in row_chunks(queries.shape[0], self.query_chunk):
            block = torch.from_numpy(np.asarray(queries[start:stop], dtype=np.float32)).to(self.device)
            found_sims, found_ids = self.search_tensor(block, k)
            sims[start:stop] = found_sims[:, : sims.shape[1]].cpu().numpy()
            ids[start:stop] = found_ids[:, : sims.shape[1]].cpu().numpy()
        return pad_missing(sims, ids, k)

    def search_tensor(self, queries: torch.Tensor, k: int):
        """Top-k of torch queries, answered on the device (no copy to the host):
        (sims float32 Q×k, ids int64 Q×k), −inf / −1 where fewer than k rows exist.
        `search` normalises its queries here too, so both give the same answers."""
        self._require_built()
        check_search_args(queries, self.dim, k)
        queries = queries.to(self.device, torch.float32)
        queries = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims = torch.full((queries.shape[0], k), -math.inf, device=self.device)
        ids = torch.full((queries.shape[0], k), -1, dtype=torch.int64, device=self.device)
        found = min(k, self.num_vectors)
        pending = torch.arange(queries.shape[0], device=self.device)
        count = k + self.settings.device_margin
        while len(pending):
            top_sims, top_ids, certain = self._certified_top_k(queries[pending], found, count)
            done = pending[certain]
            sims[done, :found], ids[done, :found] = top_sims[certain], top_ids[certain]
            pending = pending[~certain]
            self.retries += len(pending)
            count *= RETRY_GROWTH
        return sims, ids

    def _certified_top_k(self, queries: torch.Tensor, k: int, count: int):
        """`_top_k_in_blocks` with the block size of this device; when the device runs out of
        memory, again with blocks a quarter the size (the results do not depend on it), down to
        MIN_BLOCK_ELEMENTS, and then a clear error naming the settings that need less."""
        blocks = self.gpu_block_elements if self.device.type == "cuda" else self.block_elements
        while True:
            try:
                return self._top_k_in_blocks(queries, k, count, blocks)
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if blocks <= MIN_BLOCK_ELEMENTS:
                    raise ConfigError(
                        f"device-exact search of {self.num_vectors:,} rows × {self.dim} on {self.device}: out of "
                        f"device memory even with {blocks:,}-entry similarity blocks; the bank takes most of it. "
                        "Set index.device_shards to split it over more GPUs, or index.kind=scann to search on "
                        "the CPU") from None
                blocks //= 4
                self.block_shrinks += 1

    def _top_k_in_blocks(self, queries: torch.Tensor, k: int, count: int, blocks: int):
        """Top-k of each query from C = `count` candidates per shard, and whether it is certain."""
        epsilon = score_error_bound(self.dtype, self.dim)
        scores, ids, bounds = [], [], []
        for shard in self.shards:
            shard_scores, shard_ids, bound = shard.candidates(queries, count, blocks, epsilon)
            scores.append(shard_scores.to(self.device))
            ids.append(shard_ids.to(self.device))
            bounds.append(bound.to(self.device))
        top_sims, top_ids = ordered_top_k(torch.cat(scores, dim=1), torch.cat(ids, dim=1), k)
        if count >= max(shard.rows for shard in self.shards):  # every row was rescored
            return top_sims, top_ids, torch.ones(len(queries), dtype=torch.bool, device=self.device)
        certain = top_sims[:, k - 1] > torch.stack(bounds).amax(dim=0)
        return top_sims, top_ids, certain

    def _require_built(self) -> None:
        if not self.shards:
            raise RuntimeError("DeviceExactIndex.search called before build()")

    @classmethod
    def load(cls, folder, device="cpu"):
        raise RuntimeError(f"{folder}: a device-exact index is never saved; it is built from the bank's features")


def _norms_at_most(features: Any, limit: float) -> bool:
    """Whether every row's norm is finite and at most `limit` (a float16 product of such a
    row with a unit query cannot overflow)."""
    for start, stop in row_chunks(features.shape[0]):
        rows = features[start:stop]
        if isinstance(rows, torch.Tensor):
            norms = rows.float().norm(dim=1)
            if len(norms) and not (torch.isfinite(norms).all() and norms.max() <= limit):
                return False
            continue
        norms = np.linalg.norm(np.asarray(rows, dtype=np.float32), axis=1)
        if not np.all(np.isfinite(norms)) or norms.max(initial=0.0) > limit:
            return False
    return True


def shard_devices(device: Any, settings: IndexSettings) -> list[torch.device]:
    """The devices a bank is split over: `device` alone, or with index.device_shards = n > 1
    (0: every GPU of the node) that many GPUs from `device` on."""
    device = torch.device(device)
    wanted = settings.device_shards
    if device.type != "cuda" or wanted == 1:
        return [device]
    available = torch.cuda.device_count()
    wanted = available if wanted == 0 else min(wanted, available)
    first = device.index or 0
    return [torch.device("cuda", (first + i) % available) for i in range(wanted)]


def device_exact_costs(job: IndexJob) -> IndexCosts:
    """Per device (the bank split over index.device_shards of them): its rows (2 bytes × D,
    a float32 norm) and one block; float32 rows on the host unless the bank's float16 rows
    serve (device_dtype float16). A query costs a low-precision matmul over every row;
    the build copies the rows over."""
    device, dim, settings = job.on, job.dim or 0, job.settings
    shards = device_shard_count(job)
    per_device = -(-job.rows // shards) * (dim * 2 + 4) + 2 * DeviceExactIndex.gpu_block_elements * 4
    host = 0 if settings.device_dtype == "float16" else job.rows * dim * 4
    rescoring = (job.settings.device_margin + 30) * dim * 4 * 2 / max(device.float_flops, 1)
    return IndexCosts(host_memory=host, device_memory=per_device,
                      build_seconds=job.rows * dim * 2 / device.host_to_device,
                      seconds_per_query=job.rows * dim * 2 / (device.half_flops * shards) + rescoring)


def device_shard_count(job: IndexJob) -> int:
    wanted = job.settings.device_shards
    return max(1, job.on.count if wanted == 0 else min(wanted, job.on.count))


def fits_the_device(job: IndexJob) -> bool:
    """auto: on a GPU, when each device's share of the bank fits its free memory less the headroom."""
    device = job.on
    if not device.is_gpu or job.dim is None:
        return False
    return device_exact_costs(job).device_memory <= device.free_memory * (1 - job.settings.device_headroom)


# Registered as "device-exact" by segfungi.index._registry, which imports this module on first use.
INDEX_KIND = IndexKind(
    DeviceExactIndex.kind,
    build=lambda features, settings, device: DeviceExactIndex(settings, shard_devices(device, settings)).build(features),
    load=DeviceExactIndex.load,
    saved=False,  # only the bank's features: rebuilt from them when searched
    options=("device_dtype", "device_margin", "device_headroom", "device_shards"),
    auto_rank=20,
    applies=fits_the_device,
    costs=device_exact_costs,
)
