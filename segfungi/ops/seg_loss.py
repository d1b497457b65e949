"""The segmentation SimCLR loss whose gradients become FUNGI patch features (paper Table 23).

Per image, the n tokens (CLS + patches) are the positive set and m retrieved neighbours
the negatives.  For every ordered pair i≠j of positives

    ℓ_ij = −log( exp(s_ij/τ) / Σ_{k ∈ pos ∪ neg, k≠i} exp(s_ik/τ) ),

and the loss is the mean over the n(n−1) pairs.  The denominator depends only on i, so

    L = 1/(n(n−1)) Σ_i [ −(1/τ) Σ_{j≠i} s_ij + (n−1) · log den_i ],

which costs O(n·(n+m)·h) instead of O(n²·(n+m)).

The authors' segmentation code (``fungi.variant: research-code``) leaves τ out of the
denominator:

    L_rc = (1/n) Σ_i [ −(1/τ)(1/(n−1)) Σ_{j≠i} s_ij + log Σ_{k ∈ pos ∪ neg, k≠i} exp(s_ik) ]

(``tau_in_denominator=False``); with τ there it is L above.  Its negatives are a
variable subset of rows per image: ``neg_mask`` (B×m, True = used) marks them.
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


def seg_simclr_loss(z_pos: torch.Tensor, z_neg: torch.Tensor, tau: float = 0.07,
                    neg_mask: torch.Tensor | None = None, tau_in_denominator: bool = True) -> torch.Tensor:
    """Per-image loss (B,) for positives ``z_pos`` (B×n×h) and negatives ``z_neg`` (B×m×h).

    Inputs must already be L2-normalised (dot product = cosine similarity).  m may be 0;
    ``neg_mask`` (B×m bool) leaves the False rows out; ``tau_in_denominator=False`` is
    the research code's denominator (module docstring).
    """
    n = z_pos.shape[1]
    if n < 2:
        raise ValueError(f"the positive set needs at least 2 tokens, got {n}")
    sim_pos = z_pos @ z_pos.transpose(1, 2)  # B×n×n
    sim_neg = z_pos @ z_neg.transpose(1, 2)  # B×n×m
    self_mask = torch.eye(n, dtype=torch.bool, device=z_pos.device)
    scale = tau if tau_in_denominator else 1.0
    logits_pos = (sim_pos / scale).masked_fill(self_mask, float("-inf"))  # k≠i
    logits_neg = sim_neg / scale
    if neg_mask is not None:
        logits_neg = logits_neg.masked_fill(~neg_mask[:, None, :], float("-inf"))
    log_den = torch.logaddexp(logits_pos.logsumexp(-1), logits_neg.logsumexp(-1))  # B×n
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


def naive_research_code_loss(z_pos: torch.Tensor, negatives: list[torch.Tensor], tau: float = 0.07) -> torch.Tensor:
    """Reference for the research-code loss: per image, its own list of negative rows
    (any number, 0 included), explicit loops, cosine similarities, no τ in the log."""
    losses = []
    for pos, neg in zip(z_pos, negatives):
        n = pos.shape[0]
        total = pos.new_zeros(())
        for i in range(n):
            pair_term = pos.new_zeros(())
            den = pos.new_zeros(())
            for j in range(n):
                if j != i:
                    s = torch.cosine_similarity(pos[i], pos[j], dim=0)
                    pair_term = pair_term + s / tau
                    den = den + torch.exp(s)
            for row in neg:
                den = den + torch.exp(torch.cosine_similarity(pos[i], row, dim=0))
            total = total - pair_term / (n - 1) + torch.log(den)
        losses.append(total / n)
    return torch.stack(losses)
