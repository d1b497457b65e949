"""The dense projection: R ∈ {−1,+1}^{dim×m} with Achlioptas rows (the FUNGI paper's).

Kernels: in float32 on a CPU the projection reads ``R_k ã_t`` from tables of signed
partial sums (:mod:`segfungi.ops.sign_lookup`) instead of running a GEMM: the same numbers
up to float rounding, 2-2.6× faster on an AVX2 CPU. The kernel (setting
``fungi.projection_kernel``, ``kernel=`` here) is not part of any identity.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from segfungi.gradients._capture import augment_inputs
from segfungi.gradients._projection import Projection, bits_to_signs, sign_bits
from segfungi.ops import sign_lookup

DENSE_KERNELS = ("auto", "lookup", "gemm")


class AchlioptasProjection(Projection):
    """Dense ±1 projection R ∈ {−1,+1}^{dim×m}, m = Dout·(Din+1), applied without ever
    materialising per-token gradients.

    For a chunk of K rows, ``P = Ã @ R_chunkᵀ`` (Ã: N×(Din+1), R_chunk reshaped to
    (K·Dout)×(Din+1)) is one large GEMM; the row-wise dot of ``P`` (N×K×Dout) with δ
    (N×Dout) gives the K projected values of every token.  Cost N·dim·Dout·(Din+1)
    multiply-adds, memory O(N·K·Dout) besides the inputs.

    On a CPU with float32 (or float64) operands the products ``R_k ã_t`` are read from
    tables instead (``kernel="auto"`` or ``"lookup"``, :mod:`segfungi.ops.sign_lookup`): 8×
    fewer operations than the GEMM for the same numbers up to float rounding. The
    matrix is then kept as one byte per 8 signs (ViT-S: 7 MB, ViT-B: 57 MB) when that
    fits ``max_cache_bytes``, else regenerated per chunk. ``kernel="gemm"`` forces the
    GEMM, which bfloat16 and accelerators always use.

    For the GEMM the signs are cached in memory, in the fastest form that fits ``max_cache_bytes``
    (default 128 MiB): int8 ±1 (ViT-S: 57 MB), else bit-packed (ViT-B: 57 MB instead of
    453 MB), else not at all — then each chunk is regenerated from its Philox keys.  Each
    chunk is widened to a float buffer right before its GEMM.  Measured per ViT-S matrix
    on one core: int8 → float32 0.05 s, bits → float32 0.14 s, regenerating ≈ 0.2 s,
    against ≈ 2.5 s of GEMM for 1024 tokens; a float32 cache (228 MB for ViT-S, 1.8 GB for
    ViT-B) was no faster than int8.
    """

    kind = "dense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dim: int,
        seed: int,
        bias: bool = True,
        chunk_rows: int | None = None,
        max_cache_bytes: int = 128 * 2**20,
        token_block: int = 2048,
        compute_dtype: str = "float32",
        kernel: str = "auto",
    ):
        super().__init__(in_features, out_features, dim, seed, bias, compute_dtype)
        if kernel not in DENSE_KERNELS:
            raise ValueError(f"dense projection kernel must be one of {', '.join(DENSE_KERNELS)}, got {kernel!r}")
        self.kernel = kernel
        # ~2M entries (8 MB float32) per chunk keeps the GEMM large and the buffers in cache.
        self.chunk_rows = int(chunk_rows) if chunk_rows else max(1, min(self.dim, 2**21 // self.num_entries))
        # Lookups: ~32k matrix rows (k, o) per embedding_bag call amortise its per-call cost
        # (measured: ViT-B 13.6 s per 1024 tokens with 3 rows of R per call, 5.4 s with 128).
        self.lookup_chunk_rows = int(chunk_rows) if chunk_rows else max(1, min(self.dim, 2**15 // self.out_features))
        self.token_block = int(token_block)
        self.lookup_block = 16 * sign_lookup.TILE_TOKENS  # tokens sharing one pass over the matrix
        packed_bytes = self.dim * (-(-self.num_entries // 8))
        if self.dim * self.num_entries <= max_cache_bytes:
            self.cache = "int8"
        elif packed_bytes <= max_cache_bytes:
            self.cache = "bits"
        else:
            self.cache = "none"
        self._cached: np.ndarray | None = None  # int8 dim×m ±1, or uint8 dim×⌈m/8⌉ bits
        code_bytes = self.dim * self.out_features * sign_lookup.num_groups(self.width)
        self.lookup_cache = "codes" if code_bytes <= max_cache_bytes else "none"
        self._lookup_cached: list | None = None  # per chunk: uint8 group codes
        self._device_cache: list | None = None  # widened chunks on a non-CPU device
        self._device_cache_key: tuple | None = None

    # ---- the matrix

    def _generate(self, rows: range) -> np.ndarray:
        return np.stack([sign_bits(self.seed, k, self.num_entries) for k in rows])

    def _row_signs(self, rows: range) -> np.ndarray:
        """int8 ±1 entries of ``rows`` (len(rows)×m): from the cache, or freshly generated."""
        if self.cache == "none":
            return bits_to_signs(self._generate(rows))
        if self._cached is None:  # built on first use
            every_row = range(self.dim)
            if self.cache == "int8":
                self._cached = bits_to_signs(self._generate(every_row))
            else:
                m = self.num_entries
                rows_bits = (sign_bits(self.seed, k, m) for k in every_row)
                self._cached = np.stack([np.packbits(bits, bitorder="little") for bits in rows_bits])
        chunk = self._cached[rows.start : rows.stop]
        if self.cache == "int8":
            return chunk
        return bits_to_signs(np.unpackbits(chunk, axis=1, count=self.num_entries, bitorder="little"))

    def _chunks(self, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[range, torch.Tensor]]:
        """(rows, R_rows as a float ±1 tensor K×m) chunk by chunk, reusing one buffer.

        The int8 → float widening runs in (single-threaded) NumPy: torch's elementwise ops
        on a shared, busy CPU are slowed down by OpenMP barriers (measured 20-40×)."""
        if device.type != "cpu":
            yield from self._device_chunks(dtype, device)
            return
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        buffer = None
        for rows in self._chunk_ranges():
            if buffer is None or buffer.shape[0] != len(rows):
                buffer = np.empty((len(rows), self.num_entries), dtype=np_dtype)
            np.copyto(buffer, self._row_signs(rows), casting="unsafe")
            # ±1 is exact in every float dtype; bfloat16 has no NumPy type, so torch casts.
            yield rows, torch.from_numpy(buffer).to(device=device, dtype=dtype)

    def _device_chunks(self, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[range, torch.Tensor]]:
        """On an accelerator the widened chunks stay resident (ViT-S: 228 MB float32,
        ViT-B: 1.8 GB; half that in bfloat16) instead of crossing the bus every call;
        one dtype/device at a time."""
        key = (dtype, device)
        if self._device_cache_key != key:
            self._device_cache = None  # drop the old copy before making the new one
            chunks = []
            for rows in self._chunk_ranges():
                signs = torch.from_numpy(np.ascontiguousarray(self._row_signs(rows)))
                chunks.append((rows, signs.to(device=device).to(dtype)))
            self._device_cache, self._device_cache_key = chunks, key
        yield from self._device_cache

    def _chunk_ranges(self, size: int | None = None) -> Iterator[range]:
        size = size or self.chunk_rows
        for start in range(0, self.dim, size):
            yield range(start, min(start + size, self.dim))

    def _chunk_codes(self, rows: range) -> np.ndarray:
        """Group bytes of rows ``rows``: (len(rows)·Dout)×G uint8, row (k, o) = R_k's row o."""
        bits = self._generate(rows)  # 0/1, straight from Philox: the sign cache is not needed here
        return sign_lookup.group_codes(bits.reshape(len(rows) * self.out_features, self.width).view(bool))

    def _lookup_chunks(self) -> Iterator[tuple[range, torch.Tensor]]:
        """(rows, int32 lookup indices of those rows) chunk by chunk. The codes are cached
        (1 byte per 8 signs; widening a chunk to int32 indices costs ~1% of its lookups,
        and caching the indices, 4× larger, measured no faster)."""
        chunks = self._chunk_ranges(self.lookup_chunk_rows)
        if self.lookup_cache == "none":
            coded = ((rows, self._chunk_codes(rows)) for rows in chunks)
        else:
            if self._lookup_cached is None:  # built on first use
                self._lookup_cached = [(rows, self._chunk_codes(rows)) for rows in chunks]
            coded = iter(self._lookup_cached)
        for rows, codes in coded:
            yield rows, sign_lookup.row_indices(codes)

    def resolved_kernel(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> str:
        """The kernel that ``project_tokens`` runs for operands of ``dtype`` on ``device``:
        ``"lookup"`` for float32/float64 on a CPU unless ``kernel="gemm"``, else ``"gemm"``."""
        if self.kernel != "auto":
            return self.kernel
        lookup = torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64)
        return "lookup" if lookup else "gemm"

    def dense_matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The whole R (dim×m). For tests and small shapes."""
        return torch.cat([chunk.clone() for _, chunk in self._chunks(dtype, torch.device("cpu"))])

    # ---- projections

    def project_tokens(self, delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Per-token projections: N×Dout deltas, N×Din inputs → N×dim."""
        self._check_shapes(delta, inputs)
        gemm_dtype = self._gemm_dtype(delta)
        augmented = augment_inputs(inputs, self.bias).to(gemm_dtype)
        out = delta.new_empty(delta.shape[0], self.dim)
        if delta.shape[0] == 0:
            return out
        if self.resolved_kernel(gemm_dtype, delta.device) == "lookup":
            return self._project_tokens_by_lookup(delta, augmented, out)
        for rows, chunk in self._chunks(gemm_dtype, delta.device):
            # (K·Dout)×(Din+1): row-major reshape of each R_k to Dout×(Din+1).
            r_rows = chunk.view(len(rows) * self.out_features, self.width)
            for t0 in range(0, delta.shape[0], self.token_block):
                a_blk, d_blk = augmented[t0 : t0 + self.token_block], delta[t0 : t0 + self.token_block]
                # N×K×Dout: R_k ã_t, widened back so the δ-contraction runs in δ's dtype.
                partial = (a_blk @ r_rows.T).to(delta.dtype).view(-1, len(rows), self.out_features)
                out[t0 : t0 + len(d_blk), rows.start : rows.stop] = torch.bmm(partial, d_blk.unsqueeze(-1)).squeeze(-1)
        return out

    def _project_tokens_by_lookup(self, delta: torch.Tensor, augmented: torch.Tensor, out: torch.Tensor):
        """:meth:`project_tokens` by table lookups (module docstring of :mod:`segfungi.ops.sign_lookup`).

        Tokens go in fixed-width tiles (the last padded with zero tokens) so that every
        token meets the same kernels whatever comes with it; a block of tiles shares
        one pass over the matrix, bounding the tables (ViT-S: 26 MB per 512 tokens)."""
        tile = sign_lookup.TILE_TOKENS
        for b0 in range(0, delta.shape[0], self.lookup_block):
            d_blk, a_blk = delta[b0 : b0 + self.lookup_block], augmented[b0 : b0 + self.lookup_block]
            tiles = -(-len(d_blk) // tile)
            a_pad = a_blk.new_zeros(tiles * tile, self.width)
            a_pad[: len(a_blk)] = a_blk
            d_pad = d_blk.new_zeros(tiles * tile, self.out_features)
            d_pad[: len(d_blk)] = d_blk
            tables = [sign_lookup.sign_tables(a_pad[i * tile : (i + 1) * tile]) for i in range(tiles)]
            d_tiles = d_pad.view(tiles, tile, self.out_features).transpose(1, 2).contiguous()  # [tile, o, t]
            projected = d_blk.new_empty(tiles, self.dim, tile)
            for rows, indices in self._lookup_chunks():
                for i, table in enumerate(tables):
                    r_a = sign_lookup.lookup_rows(indices, table).view(len(rows), self.out_features, tile)
                    projected[i, rows.start : rows.stop] = (r_a * d_tiles[i]).sum(1)  # Σ_o δ_o (R_k ã)_o
            out[b0 : b0 + len(d_blk)] = projected.transpose(1, 2).reshape(-1, self.dim)[: len(d_blk)]
        return out

    def project_gradients(self, grads: torch.Tensor) -> torch.Tensor:
        """Projections of whole gradients: S×Dout×(Din+1) → S×dim."""
        flat = grads.reshape(grads.shape[0], self.num_entries)
        out = flat.new_empty(flat.shape[0], self.dim)
        gemm_dtype = self._gemm_dtype(flat)
        operand = flat.to(gemm_dtype)
        for rows, chunk in self._chunks(gemm_dtype, flat.device):
            out[:, rows.start : rows.stop] = (operand @ chunk.T).to(flat.dtype)
        return out

