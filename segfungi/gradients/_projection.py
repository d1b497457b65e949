"""What every projection shares: the interface, and the random signs of its matrix.

Per-token gradients are never materialised.  With ``ã_t = [a_t; 1]`` the flattened
gradient is ``vec(δ_t ã_tᵀ)`` (row-major, i.e. ``torch.cat([W.grad, b.grad[:, None]], 1)
.view(-1)`` as in the FUNGI paper), and its projection by a matrix ``R`` with rows
``R_k`` (reshaped to ``Dout×(Din+1)``) is ``(R vec(δ_t ã_tᵀ))_k = δ_tᵀ R_k ã_t``.

Random matrices (dense and structured) are functions of ``(seed, shape)`` only.  Row
``k`` is read from the raw 64-bit output of ``numpy.random.Philox(key=[seed, k])``
(structured rows use ``key=[seed, 2**63 + k]``): the words are laid out little-endian,
unpacked to bits least-significant first, and bit 1 → +1, bit 0 → −1.  Raw bit-generator
output is covered by NumPy's stream-compatibility guarantee, so the matrix is the same
for every chunk size, process, machine and NumPy version.  Entries stay ±1 (no
1/sqrt(dim) scaling): features are L2-normalised afterwards, which removes any global
scale.
"""
from __future__ import annotations

import numpy as np
import torch

from segfungi.gradients._capture import TokenGradients
from segfungi.gradients._compute_dtype import check_compute_dtype

RNG_SCHEME = "numpy-philox-raw-le-bits-v1"
_MAX_SEED = 2**63


def check_seed(seed: int) -> int:
    seed = int(seed)
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"projection seed must be in [0, 2**63), got {seed}")
    return seed


def sign_bits(seed: int, row: int, count: int) -> np.ndarray:
    """``count`` fair coin flips (uint8 0/1) of matrix row ``row``: raw Philox words, LSB first."""
    words = np.random.Philox(key=np.array([seed, row], dtype=np.uint64)).random_raw(-(-count // 64))
    return np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:count]


def bits_to_signs(bits: np.ndarray) -> np.ndarray:
    """uint8 0/1 → int8 ±1, in place (bit 1 → +1, bit 0 → −1)."""
    signs = bits.view(np.int8)
    signs <<= 1
    signs -= 1
    return signs


def select_tokens(tg: TokenGradients, token_index: torch.Tensor | None):
    delta, inputs = tg.delta, tg.inputs
    if token_index is not None:
        token_index = torch.as_tensor(token_index, dtype=torch.long, device=delta.device)
        delta = delta.index_select(-2, token_index)
        inputs = inputs.index_select(-2, token_index)
    return delta, inputs


class Projection:
    """Shared interface: ``project`` routes to per-token or summed projection; a subclass
    gives ``project_tokens`` and ``project_gradients``."""

    kind: str  # the name it is registered under, recorded in its identity as "kind" (bank hashes)
    in_features: int
    out_features: int
    dim: int
    seed: int
    bias: bool
    compute_dtype: str = "float32"

    def __init__(self, in_features: int, out_features: int, dim: int, seed: int, bias: bool, compute_dtype: str):
        self.in_features, self.out_features, self.dim = int(in_features), int(out_features), int(dim)
        self.seed, self.bias = check_seed(seed), bool(bias)
        self.compute_dtype = check_compute_dtype(compute_dtype)

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
        delta, inputs = select_tokens(tg, token_index)
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
