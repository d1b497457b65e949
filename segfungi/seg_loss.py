"""The segmentation SimCLR loss whose gradients become FUNGI patch features (paper Table 23).

Per image, the n tokens (CLS + patches) are the positive set and m retrieved neighbours
the negatives.  For every ordered pair i≠j of positives

    ℓ_ij = −log( exp(s_ij/τ) / Σ_{k ∈ pos ∪ neg, k≠i} exp(s_ik/τ) ),

and the loss is the mean over the n(n−1) pairs.  The denominator depends only on i, so

    L = 1/(n(n−1)) Σ_i [ −(1/τ) Σ_{j≠i} s_ij + (n−1) · log den_i ],

which costs O(n·(n+m)·h) instead of O(n²·(n+m)).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def make_head(embed_dim: int, out_dim: int = 96, seed: int = 0) -> nn.Linear:
    """A fixed random linear head D→out_dim, seeded, frozen.

    Initialised like ``nn.Linear``'s default (weight and bias ~ U(−1/√D, 1/√D)) but from a
    private ``torch.Generator``, so the global RNG is neither used nor disturbed.
    """
    generator = torch.Generator().manual_seed(int(seed))
    head = nn.utils.skip_init(nn.Linear, embed_dim, out_dim)  # no draw from the global RNG
    bound = 1.0 / math.sqrt(embed_dim)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    head.requires_grad_(False)
    return head.eval()


def seg_simclr_loss(z_pos: torch.Tensor, z_neg: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Per-image loss (B,) for positives ``z_pos`` (B×n×h) and negatives ``z_neg`` (B×m×h).

    Inputs must already be L2-normalised (dot product = cosine similarity).  m may be 0.
    """
    n = z_pos.shape[1]
    if n < 2:
        raise ValueError(f"the positive set needs at least 2 tokens, got {n}")
    sim_pos = z_pos @ z_pos.transpose(1, 2)  # B×n×n
    sim_neg = z_pos @ z_neg.transpose(1, 2)  # B×n×m
    self_mask = torch.eye(n, dtype=torch.bool, device=z_pos.device)
    logits_pos = (sim_pos / tau).masked_fill(self_mask, float("-inf"))  # k≠i
    log_den = torch.logaddexp(logits_pos.logsumexp(-1), (sim_neg / tau).logsumexp(-1))  # B×n
    pair_sims = (sim_pos.sum(-1) - sim_pos.diagonal(dim1=1, dim2=2)) / tau  # Σ_{j≠i} s_ij/τ
    per_anchor = -pair_sims + (n - 1) * log_den
    return per_anchor.sum(-1) / (n * (n - 1))


def naive_seg_simclr_loss(z_pos: torch.Tensor, z_neg: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Reference: explicit loop over images and ordered pairs (i, j), cosine similarities."""
    losses = []
    for pos, neg in zip(z_pos, z_neg):
        candidates = torch.cat([pos, neg])  # the first n are the positives
        n = pos.shape[0]
        total = pos.new_zeros(())
        for i in range(n):
            sims = torch.cosine_similarity(pos[i : i + 1], candidates, dim=-1) / tau
            others = torch.cat([sims[:i], sims[i + 1 :]])
            log_den = torch.log(torch.exp(others).sum())
            for j in range(n):
                if j != i:
                    total = total - (sims[j] - log_den)
        losses.append(total / (n * (n - 1)))
    return torch.stack(losses)
