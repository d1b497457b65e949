"""L2 normalisation, and the FUNGI feature: normalised parts concatenated (paper Eq. 2)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """x / ||x||₂ along ``dim`` (zero vectors stay zero)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


def fungi_concat(grad_feats: Sequence[torch.Tensor], embedding: torch.Tensor) -> torch.Tensor:
    """FUNGI feature: cat(normalise(g₁), …, normalise(embedding)) along the last axis."""
    parts = [l2_normalize(g) for g in grad_feats] + [l2_normalize(embedding)]
    return torch.cat(parts, dim=-1)
