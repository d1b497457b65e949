"""The structured projection: rows that are sums of outer products of ±1 vectors."""
from __future__ import annotations

import numpy as np
import torch

from segfungi.gradients._capture import augment_inputs
from segfungi.gradients._projection import Projection, sign_bits

_STRUCTURED_ROW_OFFSET = 2**63  # keeps structured rows on other Philox keys than dense rows


class OuterProductProjection(Projection):
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

    def __init__(self, in_features: int, out_features: int, dim: int, seed: int, bias: bool = True,
                 terms: int = 1, compute_dtype: str = "float32"):
        super().__init__(in_features, out_features, dim, seed, bias, compute_dtype)
        self.terms = int(terms)
        self.token_block = 1024
        if self.terms < 1:
            raise ValueError(f"structured projection needs terms >= 1, got {terms}")
        block = self.out_features + self.width
        bits = np.stack(
            [sign_bits(self.seed, _STRUCTURED_ROW_OFFSET + k, self.terms * block) for k in range(self.dim)]
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
            a_blk = augment_inputs(inputs[t0 : t0 + self.token_block], self.bias).to(gemm_dtype)
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
