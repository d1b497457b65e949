"""From the neighbours retrieved for each loss token to the negatives of the FUNGI loss.

The support index hands over, per image, the K nearest support patches of each of the
n loss tokens (B×n×K×D). Two variants (setting ``fungi.variant``) turn them into the
negatives:

``paper`` (Table 23): K = ``fungi.support_neighbours`` (2); one of the K is kept
uniformly at random per token, so an image has exactly n negatives.

``research-code`` (what the authors' segmentation script computes): K =
``fungi.research_code_neighbours`` (5). The K neighbours of a token, laid end to end,
form a flat vector b of K·D values; that block is read as D×K and transposed, so the
token's j-th "negative" is

    v_j[e] = b[e·K + j]        (e = 0..D−1, j = 0..K−1),

i.e. every v_j mixes coordinates of all K neighbours. The first N =
``fungi.research_code_kept`` rows are kept, then each of the n·N rows is kept
independently with probability ``fungi.research_code_keep_fraction`` (0.5), so an
image has between 0 and n·N negatives (a mask marks the kept ones).

Randomness: ``generator`` is one ``torch.Generator`` for the whole batch, or one per
image; with one per image seeded from the image (bank builds: bank seed, epoch, image;
queries: the image's pixels), an image's negatives do not depend on its batch.

Spaces (setting ``fungi.negatives``): ``normalised`` neighbours are the L2-normalised
rows of the support bank (what the authors' code feeds the head); ``raw`` ones are the
final-normed tokens (stored feature × stored norm), the space of the positives.
``check_space`` refuses candidates that are visibly not in the space named.
"""
from __future__ import annotations

from typing import Sequence

import torch

VARIANTS = ("paper", "research-code")
SPACES = ("raw", "normalised")

Generators = torch.Generator | Sequence[torch.Generator] | None


def _per_image(generator: Generators, batch: int) -> list[torch.Generator] | None:
    """None (one shared generator) or the list of B per-image generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators given for {batch} images")
    return generators


def _shared(generator: Generators) -> torch.Generator:
    return generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(0)


def keep_one(candidates: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Paper variant: B×M×K×D -> B×M×D, one of the K kept uniformly at random per row."""
    batch, rows, k, dim = candidates.shape
    per_image = _per_image(generator, batch)
    if per_image is None:
        gen = _shared(generator)
        choice = torch.randint(k, (batch, rows), generator=gen, device=gen.device)
    else:
        choice = torch.stack([torch.randint(k, (rows,), generator=g, device=g.device) for g in per_image])
    choice = choice.to(candidates.device)
    return candidates.gather(2, choice[:, :, None, None].expand(-1, -1, 1, dim)).squeeze(2)


def scrambled_gather(neighbours: torch.Tensor, kept: int) -> torch.Tensor:
    """…×K×D -> …×N×D: the research code's view of K neighbours as D×K, transposed, first N rows."""
    *lead, k, dim = neighbours.shape
    if not 0 < kept <= k:
        raise ValueError(f"research-code negatives: kept rows must be in 1..{k}, got {kept}")
    flat = neighbours.reshape(*lead, k * dim)
    return flat.reshape(*lead, dim, k).transpose(-1, -2)[..., :kept, :]


def research_code_negatives(candidates: torch.Tensor, kept: int, keep_fraction: float,
                            generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Research-code variant: B×M×K×D -> (B×(M·N)×D negatives, B×(M·N) bool mask of kept rows)."""
    batch, rows = candidates.shape[:2]
    gathered = scrambled_gather(candidates, kept)  # B×M×N×D
    negatives = gathered.reshape(batch, rows * kept, candidates.shape[-1])
    per_image = _per_image(generator, batch)
    if per_image is None:
        gen = _shared(generator)
        draws = torch.rand((batch, rows * kept), generator=gen, device=gen.device)
    else:
        draws = torch.stack([torch.rand(rows * kept, generator=g, device=g.device) for g in per_image])
    return negatives, (draws <= keep_fraction).to(candidates.device)


def check_space(candidates: torch.Tensor, loss_tokens: torch.Tensor, space: str) -> None:
    """Refuse neighbours that are visibly not in the space ``fungi.negatives`` names."""
    if candidates.numel() == 0:
        return
    norms = candidates.norm(dim=-1)
    unit = torch.ones((), dtype=norms.dtype, device=norms.device)
    looks_unit = torch.allclose(norms, unit, atol=1e-2)  # float16-stored unit rows are within ~1e-3
    if space == "normalised" and not looks_unit:
        raise ValueError(
            "fungi.negatives=normalised but the neighbours are not L2-normalised "
            f"(norms {float(norms.min()):.3g}..{float(norms.max()):.3g}): pass the support bank's "
            "normalised rows (FeatureExtractor.embeddings(x)), or set fungi.negatives=raw"
        )
    if space == "raw" and looks_unit and not torch.allclose(loss_tokens.norm(dim=-1), unit, atol=1e-2):
        raise ValueError(
            "fungi.negatives=raw but the neighbours look L2-normalised and the tokens are not: pass raw "
            "neighbour embeddings (FeatureExtractor.embeddings(x, normalize=False)), or set "
            "fungi.negatives=normalised"
        )
