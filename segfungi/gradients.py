"""Shared gradient core: per-token gradients of one linear layer and their random projection.

For a linear layer applied token by token, ``y_t = W a_t + b``, the loss gradient is
``dL/dW = Σ_t δ_t a_tᵀ`` and ``dL/db = Σ_t δ_t`` with ``δ_t = dL/dy_t``.  The part that
belongs to token ``t`` is the rank-1 pair ``(δ_t a_tᵀ, δ_t)``, so one ordinary backward
pass gives every per-token gradient: :func:`capture_token_gradients` records ``a_t`` in
the forward and ``δ_t`` in the backward.

Per-token gradients are never materialised.  With ``ã_t = [a_t; 1]`` the flattened
gradient is ``vec(δ_t ã_tᵀ)`` (row-major, i.e. ``torch.cat([W.grad, b.grad[:, None]], 1)
.view(-1)`` as in the FUNGI paper), and its projection by a matrix ``R`` with rows
``R_k`` (reshaped to ``Dout×(Din+1)``) is ``(R vec(δ_t ã_tᵀ))_k = δ_tᵀ R_k ã_t``.

Random matrices (both kinds) are functions of ``(seed, shape)`` only.  Row ``k`` is read
from the raw 64-bit output of ``numpy.random.Philox(key=[seed, k])`` (structured rows
use ``key=[seed, 2**63 + k]``): the words are laid out little-endian, unpacked to bits
least-significant first, and bit 1 → +1, bit 0 → −1.  Raw bit-generator output is
covered by NumPy's stream-compatibility guarantee, so the matrix is the same for every
chunk size, process, machine and NumPy version.  Entries stay ±1 (no 1/sqrt(dim)
scaling): features are L2-normalised afterwards, which removes any global scale.

Precision (``compute_dtype``): the projection's GEMMs may run in bfloat16. R's ±1
entries are exact in bfloat16, so only ã_t (and, for whole gradients, G) is rounded
(relative 2⁻⁹); the products are accumulated in float32 by the GEMM kernels and the
δ-contraction runs in float32, so a projected value moves by about one bfloat16
rounding. This is the same projection at a lower precision, not another projection:
``identity()`` names the dtype only when it is not float32, so float32 banks keep
their hashes. ``resolve_compute_dtype("auto", device)`` picks bfloat16 only where the
hardware has bfloat16 GEMM instructions (CPU flags amx_bf16 / avx512_bf16, or a CUDA
device that supports bfloat16); elsewhere bfloat16 GEMMs are emulated and several
times slower (measured 6.5× on an AVX2-only CPU: benchmarks/README.md).

Kernels: in float32 on a CPU the dense projection reads ``R_k ã_t`` from tables of
signed partial sums (:mod:`segfungi.sign_lookup`) instead of running a GEMM: the same
numbers up to float rounding, 2-2.6× faster on an AVX2 CPU. The kernel (setting
``fungi.projection_kernel``, ``kernel=`` here) is not part of any identity.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import sign_lookup

RNG_SCHEME = "numpy-philox-raw-le-bits-v1"
_STRUCTURED_ROW_OFFSET = 2**63  # keeps structured rows on other Philox keys than dense rows
_MAX_SEED = 2**63
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
DENSE_KERNELS = ("auto", "lookup", "gemm")


# --------------------------------------------------------------------------- capture


@dataclass
class TokenGradients:
    """What one backward pass leaves for a linear layer, token by token.

    ``delta`` (…×T×Dout) holds δ_t = dL/dy_t, ``inputs`` (…×T×Din) holds a_t; ``bias`` says
    whether the layer has a bias (then the per-token gradient is ``(δ_t a_tᵀ, δ_t)``).
    """

    delta: torch.Tensor
    inputs: torch.Tensor
    bias: bool

    def augmented_inputs(self) -> torch.Tensor:
        """ã_t = [a_t; 1] when the layer has a bias, else a_t."""
        return _augment(self.inputs, self.bias)

    def summed(self) -> torch.Tensor:
        """Σ_t δ_t ã_tᵀ per leading index: …×Dout×(Din+1) — the layer's whole-input gradient."""
        return torch.einsum("...to,...ti->...oi", self.delta, self.augmented_inputs())

    def materialize(self) -> torch.Tensor:
        """Every per-token gradient ``δ_t ã_tᵀ`` (…×T×Dout×(Din+1)). For tests and small shapes only."""
        return self.delta.unsqueeze(-1) * self.augmented_inputs().unsqueeze(-2)


class _Call:
    """One forward call of the watched layer: its input, and the output gradient once known."""

    def __init__(self, inputs: torch.Tensor, bias: bool):
        self.inputs = inputs
        self.bias = bias
        self.delta: torch.Tensor | None = None

    def store_delta(self, grad: torch.Tensor) -> None:
        self.delta = grad.detach()


class TokenGradientRecorder:
    """Collects layer inputs during the forward and output gradients during the backward."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.calls: list[_Call] = []

    def _forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        call = _Call(args[0].detach(), module.bias is not None)
        self.calls.append(call)
        if not torch.is_grad_enabled():
            return None
        if not output.requires_grad:
            # Nothing upstream needs a gradient (frozen model): make the output a leaf so the
            # backward stops right here instead of running through the layer's own weights.
            output = output.detach().requires_grad_(True)
            output.register_hook(call.store_delta)
            return output
        output.register_hook(call.store_delta)
        return None

    def results(self) -> list[TokenGradients]:
        """One :class:`TokenGradients` per forward call of the layer, in call order."""
        missing = [i for i, call in enumerate(self.calls) if call.delta is None]
        if missing:
            raise RuntimeError(
                f"no gradient reached the watched layer for forward call(s) {missing}: "
                "run loss.backward() inside the capture, with autograd enabled in the forward"
            )
        return [TokenGradients(call.delta, call.inputs, call.bias) for call in self.calls]

    def result(self) -> TokenGradients:
        """The single forward call's gradients (raises if the layer ran more or less than once)."""
        if len(self.calls) != 1:
            raise RuntimeError(
                f"the watched layer ran {len(self.calls)} times during the capture; use results()"
            )
        return self.results()[0]


@contextlib.contextmanager
def capture_token_gradients(layer: nn.Linear) -> Iterator[TokenGradientRecorder]:
    """Record per-token inputs and output gradients of ``layer`` for one forward/backward.

    Usage::

        with capture_token_gradients(backbone.grad_layer) as rec:
            loss = loss_fn(model(x))
            loss.backward()
        tg = rec.result()

    The layer's parameters need not require gradients: if its output does not require
    grad, the hook turns the output into a leaf so the backward still reaches it (and
    stops there).
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"capture_token_gradients needs an nn.Linear, got {type(layer).__name__}")
    recorder = TokenGradientRecorder(layer)
    handle = layer.register_forward_hook(recorder._forward_hook)
    try:
        yield recorder
    finally:
        handle.remove()


# --------------------------------------------------------------------------- helpers


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """x / ||x||₂ along ``dim`` (zero vectors stay zero)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


def fungi_concat(grad_feats: Sequence[torch.Tensor], embedding: torch.Tensor) -> torch.Tensor:
    """FUNGI feature: cat(normalise(g₁), …, normalise(embedding)) along the last axis."""
    parts = [l2_normalize(g) for g in grad_feats] + [l2_normalize(embedding)]
    return torch.cat(parts, dim=-1)


def _augment(inputs: torch.Tensor, bias: bool) -> torch.Tensor:
    if not bias:
        return inputs
    return torch.cat([inputs, inputs.new_ones(inputs.shape[:-1] + (1,))], dim=-1)


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"projection seed must be in [0, 2**63), got {seed}")
    return seed


def _sign_bits(seed: int, row: int, count: int) -> np.ndarray:
    """``count`` fair coin flips (uint8 0/1) of matrix row ``row``: raw Philox words, LSB first."""
    words = np.random.Philox(key=np.array([seed, row], dtype=np.uint64)).random_raw(-(-count // 64))
    return np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:count]


def _bits_to_signs(bits: np.ndarray) -> np.ndarray:
    """uint8 0/1 → int8 ±1, in place (bit 1 → +1, bit 0 → −1)."""
    signs = bits.view(np.int8)
    signs <<= 1
    signs -= 1
    return signs


def cpu_has_fast_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 GEMM instructions (AMX-BF16 or AVX-512-BF16).

    Read from the Linux /proc/cpuinfo flags (or the given text); False when they cannot
    be read, so an unknown machine keeps the float32 path."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(flag in flags for flag in _FAST_BF16_CPU_FLAGS)


def resolve_compute_dtype(setting: str, device: str | torch.device = "cpu") -> str:
    """The projection dtype to use (and to record): ``float32``, ``bfloat16``, or
    ``auto`` = bfloat16 where ``device`` has fast bfloat16 GEMMs, else float32.

    Only the resolved name may enter an identity: "auto" means different things on
    different machines."""
    if setting in COMPUTE_DTYPES:
        return setting
    if setting != "auto":
        raise ValueError(f"projection dtype must be auto, float32 or bfloat16, got {setting!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    return "float32"


def _check_compute_dtype(name: str) -> str:
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} (resolve 'auto' first), got {name!r}"
        )
    return name


def _select_tokens(tg: TokenGradients, token_index: torch.Tensor | None):
    delta, inputs = tg.delta, tg.inputs
    if token_index is not None:
        token_index = torch.as_tensor(token_index, dtype=torch.long, device=delta.device)
        delta = delta.index_select(-2, token_index)
        inputs = inputs.index_select(-2, token_index)
    return delta, inputs


class _Projection:
    """Shared interface: ``project`` routes to per-token or summed projection."""

    in_features: int
    out_features: int
    dim: int
    bias: bool

    @property
    def width(self) -> int:
        """Columns of one gradient row: Din + 1 with a bias, else Din."""
        return self.in_features + int(self.bias)

    @property
    def num_entries(self) -> int:
        """m: values in one flattened gradient."""
        return self.out_features * self.width

    def project(
        self, tg: TokenGradients, token_index: torch.Tensor | None = None, reduce: str = "none"
    ) -> torch.Tensor:
        """Project per-token gradients: …×T'×dim (``reduce="none"``) or …×dim (``"sum"``).

        ``token_index`` (1-D LongTensor) selects tokens along the token axis first.  With
        ``"sum"`` the result is the projection of Σ_t δ_t ã_tᵀ, the gradient of the whole
        input's loss — so B independent per-sample losses backwarded once give B
        per-sample gradients.
        """
        if tg.bias != self.bias:
            raise ValueError(f"layer bias={tg.bias} but projection built with bias={self.bias}")
        delta, inputs = _select_tokens(tg, token_index)
        self._check_shapes(delta, inputs)
        lead = delta.shape[:-2]
        if reduce == "none":
            tokens = delta.shape[-2]
            flat = self.project_tokens(delta.reshape(-1, self.out_features), inputs.reshape(-1, self.in_features))
            return flat.reshape(*lead, tokens, self.dim)
        if reduce == "sum":
            summed = TokenGradients(delta, inputs, self.bias).summed()
            return self.project_gradients(summed.reshape(-1, self.out_features, self.width)).reshape(*lead, self.dim)
        raise ValueError(f"reduce must be 'none' or 'sum', got {reduce!r}")

    def _check_shapes(self, delta: torch.Tensor, inputs: torch.Tensor) -> None:
        if delta.shape[-1] != self.out_features or inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"gradients of a {inputs.shape[-1]}→{delta.shape[-1]} layer given to a projection "
                f"built for {self.in_features}→{self.out_features}"
            )

    def project_tokens(self, delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project_gradients(self, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    compute_dtype: str = "float32"

    def identity(self) -> dict:
        ident = {
            "kind": self.kind,
            "rng": RNG_SCHEME,
            "seed": self.seed,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "dim": self.dim,
        }
        if self.compute_dtype != "float32":  # float32 banks keep the hashes they had
            ident["compute_dtype"] = self.compute_dtype
        return ident

    def _gemm_dtype(self, like: torch.Tensor) -> torch.dtype:
        """The GEMM operands' dtype: the inputs' own, or bfloat16 for float32 inputs
        when compute_dtype asks for it (float64 references stay float64)."""
        if self.compute_dtype == "bfloat16" and like.dtype == torch.float32:
            return torch.bfloat16
        return like.dtype


# --------------------------------------------------------------------------- dense


class AchlioptasProjection(_Projection):
    """Dense ±1 projection R ∈ {−1,+1}^{dim×m}, m = Dout·(Din+1), applied without ever
    materialising per-token gradients.

    For a chunk of K rows, ``P = Ã @ R_chunkᵀ`` (Ã: N×(Din+1), R_chunk reshaped to
    (K·Dout)×(Din+1)) is one large GEMM; the row-wise dot of ``P`` (N×K×Dout) with δ
    (N×Dout) gives the K projected values of every token.  Cost N·dim·Dout·(Din+1)
    multiply-adds, memory O(N·K·Dout) besides the inputs.

    On a CPU with float32 (or float64) operands the products ``R_k ã_t`` are read from
    tables instead (``kernel="auto"`` or ``"lookup"``, :mod:`segfungi.sign_lookup`): 8×
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
        self.in_features, self.out_features, self.dim = int(in_features), int(out_features), int(dim)
        self.seed, self.bias = _check_seed(seed), bool(bias)
        self.compute_dtype = _check_compute_dtype(compute_dtype)
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
        return np.stack([_sign_bits(self.seed, k, self.num_entries) for k in rows])

    def _row_signs(self, rows: range) -> np.ndarray:
        """int8 ±1 entries of ``rows`` (len(rows)×m): from the cache, or freshly generated."""
        if self.cache == "none":
            return _bits_to_signs(self._generate(rows))
        if self._cached is None:  # built on first use
            every_row = range(self.dim)
            if self.cache == "int8":
                self._cached = _bits_to_signs(self._generate(every_row))
            else:
                m = self.num_entries
                rows_bits = (_sign_bits(self.seed, k, m) for k in every_row)
                self._cached = np.stack([np.packbits(bits, bitorder="little") for bits in rows_bits])
        chunk = self._cached[rows.start : rows.stop]
        if self.cache == "int8":
            return chunk
        return _bits_to_signs(np.unpackbits(chunk, axis=1, count=self.num_entries, bitorder="little"))

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
        augmented = _augment(inputs, self.bias).to(gemm_dtype)
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
        """:meth:`project_tokens` by table lookups (module docstring of :mod:`segfungi.sign_lookup`).

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


# --------------------------------------------------------------------------- structured


class OuterProductProjection(_Projection):
    """Structured projection whose rows are sums of ``terms`` outer products,
    R_k = Σ_j u_kj ⊗ v_kj (u_kj ∈ {±1}^Dout, v_kj ∈ {±1}^(Din+1)), so
    ``δ_tᵀ R_k ã_t = Σ_j (δ_tᵀ u_kj)(ã_tᵀ v_kj)``: two small GEMMs,
    N·dim·terms·(Dout+Din+1) multiply-adds instead of N·dim·Dout·(Din+1) (ViT-S, 1024
    tokens, terms=16: 4.8 G multiply-adds instead of 58).

    Row k takes terms·(Dout + Din + 1) bits from Philox key [seed, 2**63 + k]; term j
    uses the j-th block of Dout + Din + 1 bits: the first Dout give u_kj, the rest v_kj
    (so terms=1 is the rank-1 matrix u_k ⊗ v_k).  Rows are not Achlioptas rows: with one
    term an inner product is estimated by a product of two independent sign sums, whose
    fourth moment is ~9 instead of ~3, i.e. ~4× the variance of a dense row; a sum of
    ``terms`` independent products brings it to 2 + 6/terms (dense: 2).  The
    `fungi.projection: structured` setting uses `fungi.structured_terms` (default 16,
    chosen by benchmarks/bench_projection_quality.py: with 1, 4 or 8 terms the recall@30
    of the dense projection's neighbours falls more than 1 point below the dense
    projection's own on ViT-S or ViT-Ti; with 16 it does not).
    Entries are not rescaled: features are L2-normalised afterwards.
    """

    kind = "structured"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dim: int,
        seed: int,
        bias: bool = True,
        chunk_rows: int | None = None,
        max_cache_bytes: int | None = None,
        terms: int = 1,
        compute_dtype: str = "float32",
    ):
        # chunk_rows / max_cache_bytes are accepted for interface parity with the dense
        # projection and ignored: the factors are only dim×terms×(Dout+Din+1) values.
        self.in_features, self.out_features, self.dim = int(in_features), int(out_features), int(dim)
        self.seed, self.bias = _check_seed(seed), bool(bias)
        self.terms = int(terms)
        self.compute_dtype = _check_compute_dtype(compute_dtype)
        self.token_block = 1024
        if self.terms < 1:
            raise ValueError(f"structured projection needs terms >= 1, got {terms}")
        block = self.out_features + self.width
        bits = np.stack(
            [_sign_bits(self.seed, _STRUCTURED_ROW_OFFSET + k, self.terms * block) for k in range(self.dim)]
        ).reshape(self.dim * self.terms, block)  # row k·terms + j = term j of row k
        signs = torch.from_numpy(bits.astype(np.float64) * 2 - 1)
        # (dim·terms)×Dout and (dim·terms)×(Din+1); with one term: row k is u_k / v_k.
        self._u, self._v = signs[:, : self.out_features], signs[:, self.out_features :]
        self._cast: dict = {}

    def _factors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cast:  # converted once per dtype/device, not per call
            self._cast = {key: (self._u.to(like).contiguous(), self._v.to(like).contiguous())}
        return self._cast[key]

    def _sum_terms(self, per_term: torch.Tensor) -> torch.Tensor:
        if self.terms == 1:
            return per_term
        return per_term.unflatten(-1, (self.dim, self.terms)).sum(-1)

    def dense_matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The equivalent dim×m matrix, rows vec(Σ_j u_kj v_kjᵀ). For tests and small shapes."""
        u, v = self._u.to(dtype), self._v.to(dtype)
        outer = (u.unsqueeze(-1) * v.unsqueeze(-2)).reshape(self.dim, self.terms, self.num_entries)
        return outer.sum(1)

    def project_tokens(self, delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        self._check_shapes(delta, inputs)
        gemm_dtype = self._gemm_dtype(delta)
        u, v = self._factors(delta.to(gemm_dtype))
        out = delta.new_empty(delta.shape[0], self.dim)
        # Blocks of tokens bound the N×(dim·terms) intermediates (1024 tokens, ViT-S, 16
        # terms: 25 MB each) whatever the batch.
        for t0 in range(0, delta.shape[0], self.token_block):
            d_blk = delta[t0 : t0 + self.token_block].to(gemm_dtype)
            a_blk = _augment(inputs[t0 : t0 + self.token_block], self.bias).to(gemm_dtype)
            per_term = (d_blk @ u.T).to(delta.dtype) * (a_blk @ v.T).to(delta.dtype)
            out[t0 : t0 + len(d_blk)] = self._sum_terms(per_term)
        return out

    def project_gradients(self, grads: torch.Tensor) -> torch.Tensor:
        """Σ_j u_kjᵀ G v_kj for every row k: S×Dout×(Din+1) → S×dim."""
        gemm_dtype = self._gemm_dtype(grads)
        u, v = self._factors(grads.to(gemm_dtype))
        g_v = (grads.to(gemm_dtype) @ v.T).to(grads.dtype)
        return self._sum_terms(torch.einsum("sok,ko->sk", g_v, u.to(grads.dtype)))

    def identity(self) -> dict:
        return {**super().identity(), "terms": self.terms}


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ProjectionKind:
    """A projection kind: ``factory(in_features, out_features, dim, seed, bias=…,
    compute_dtype=…, **options)`` builds one; ``options_from_settings(fungi)`` reads its own options from the ``fungi``
    settings section (e.g. ``terms`` from ``fungi.structured_terms``)."""

    name: str
    factory: Callable[..., _Projection]
    options_from_settings: Callable[[dict], dict]


_KINDS: dict[str, ProjectionKind] = {}


def register_projection_kind(
    name: str, factory: Callable[..., _Projection], *, options_from_settings: Callable[[dict], dict] | None = None
) -> ProjectionKind:
    """Makes ``name`` usable as ``fungi.projection`` / ``make_projection(name, …)``: a new kind
    is this one call."""
    if not name:
        raise ValueError("a projection kind needs a name")
    if name in _KINDS:
        raise ValueError(f"projection kind {name!r} is already registered")
    _KINDS[name] = ProjectionKind(name, factory, options_from_settings or (lambda fungi: {}))
    return _KINDS[name]


def unregister_projection_kind(name: str) -> None:
    """Removes a kind registered with :func:`register_projection_kind` (e.g. a test's toy)."""
    _KINDS.pop(name, None)


def projection_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS)


def _projection_kind(kind: str) -> ProjectionKind:
    if kind not in _KINDS:
        raise ValueError(f"unknown projection kind {kind!r}; choose one of {sorted(_KINDS)}")
    return _KINDS[kind]


def projection_options(kind: str, fungi: dict) -> dict:
    """The options ``kind`` takes from the ``fungi`` settings section (``{}`` for dense)."""
    return _projection_kind(kind).options_from_settings(fungi)


register_projection_kind("dense", AchlioptasProjection,
                         options_from_settings=lambda fungi: {"kernel": fungi["projection_kernel"]})
register_projection_kind(
    "structured", OuterProductProjection, options_from_settings=lambda fungi: {"terms": int(fungi["structured_terms"])}
)


def make_projection(
    kind: str = "dense", *, in_features: int, out_features: int, dim: int, seed: int, bias: bool = True, **options
) -> _Projection:
    """Build a projection by registered name: ``"dense"`` (default, the paper's) or
    ``"structured"`` (see :func:`register_projection_kind`)."""
    return _projection_kind(kind).factory(in_features, out_features, dim, seed, bias=bias, **options)
