"""Patch features: backbone embeddings, or FUNGI = cat(normalised projected gradient, normalised embedding).

The FUNGI pass per batch of images (paper App. C.2, Table 23):

1. run the backbone up to the last block without autograd;
2. run the last block with the gradient capture on ``blocks[-1].attn.proj``;
3. the positive set is CLS + patch tokens (register tokens are left out of the loss:
   they are neither image patches nor the image summary, and the authors' code, written
   for DINO v1, never saw them); the negatives come from the K retrieved neighbours of
   each token as ``fungi.variant`` says (``segfungi.ops.negatives``: ``paper`` keeps one of
   K=2 at random, ``research-code`` the authors' scrambled gather with row dropout);
   both go through the same fixed head and are L2-normalised;
4. the per-image SimCLR losses (``segfungi.ops.seg_loss``; research-code: no τ in the
   denominator) are summed and backwarded once — each image's gradient only depends on
   its own loss, so batching does not mix images;
5. only the requested patches' gradients are projected, then concatenated with the
   patch embedding (each part L2-normalised): ``kept_gradients`` then ``project``, so a
   bank build projects the rows of a whole shard at once.

Embedding spaces: ``embeddings()`` and ``FungiOutput.embeddings`` are L2-normalised (what
banks and indexes store).  Which space the neighbours enter the head in is the setting
``fungi.negatives``: ``normalised`` (default; the authors' code feeds the L2-normalised
rows of its support memory, so this is what produced the published numbers) or ``raw``
(final-normed tokens, the positives' own space, ``embeddings(x, normalize=False)``).
The paper does not say.  Neighbours visibly in the other space are refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from segfungi.backbones import Backbone, full_float32
from segfungi.feature_kinds import FeatureKind, check_feature_kind
from segfungi.gradients import (
    TokenGradients,
    fungi_concat,
    gradient_pass,
    l2_normalize,
    make_projection,
    resolve_compute_dtype,
)
from segfungi.infra.errors import ConfigError
from segfungi.ops.negatives import SPACES, VARIANTS, check_space, keep_one, research_code_negatives
from segfungi.ops.seg_loss import make_head, seg_simclr_loss

Negatives = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FungiOutput:
    """``features[b]``: P_b×2D FUNGI features of image b's requested patches (gradient part
    first, then embedding part, each L2-normalised); ``embeddings``: B×(gh·gw)×D
    L2-normalised patch embeddings of all patches; ``losses``: B per-image losses."""

    features: list[torch.Tensor]
    embeddings: torch.Tensor
    losses: torch.Tensor


@dataclass
class KeptGradients:
    """The gradient pass's result for the patches kept, the images' rows end to end:
    each patch's rank-1 gradient (δ, a) and its normalised embedding; ``counts[b]`` rows
    belong to image b. :meth:`FeatureExtractor.project` turns it into FUNGI features, so a
    bank projects a whole shard's rows in one call."""

    delta: torch.Tensor  # R×Dout
    inputs: torch.Tensor  # R×Din
    embeddings: torch.Tensor  # R×D, L2-normalised
    counts: list[int]

    @classmethod
    def joined(cls, parts: Sequence["KeptGradients"]) -> "KeptGradients":
        return cls(torch.cat([p.delta for p in parts]), torch.cat([p.inputs for p in parts]),
                   torch.cat([p.embeddings for p in parts]), [c for p in parts for c in p.counts])


class FeatureExtractor:
    """Embeddings or FUNGI features of a frozen backbone (contract in docs/architecture.md).

    It owns every step from pixels to features: uint8 images → network input
    (`network_input`) → last-block input (`last_block_input`) → embeddings, or the loss
    forward/backward and the kept patches' gradients (`kept_gradients`) → their projection
    joined to the embeddings (`project`). `embeddings(images)` and `fungi(images, …)` run
    them all; a bank build or a cached evaluation starts from a stored last-block input.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        features: str = "embeddings",
        head_dim: int = 96,
        tau: float = 0.07,
        proj_dim: int | None = None,
        proj_seed: int = 0,
        head_seed: int = 0,
        projection: str = "dense",
        projection_options: dict | None = None,
        projection_dtype: str = "float32",
        negatives: str = "normalised",
        variant: str = "paper",
        research_code_neighbours: int = 5,
        research_code_kept: int = 5,
        research_code_keep_fraction: float = 0.5,
    ):
        features = check_feature_kind(features, "features").value  # records keep the plain word
        _check_variant(negatives, variant, research_code_neighbours, research_code_kept, research_code_keep_fraction)
        self.backbone = backbone
        self.features = features
        self.negatives, self.variant = negatives, variant
        self.rc_neighbours, self.rc_kept = int(research_code_neighbours), int(research_code_kept)
        self.rc_keep_fraction = float(research_code_keep_fraction)
        self.head_dim, self.tau, self.head_seed = int(head_dim), float(tau), int(head_seed)
        self.head = make_head(backbone.embed_dim, self.head_dim, self.head_seed).to(backbone.device)
        layer = backbone.grad_layer
        if layer is None and features == FeatureKind.FUNGI:  # a CustomBackbone given no grad_layer, or a block without one
            raise ConfigError(getattr(backbone, "grad_layer_problem", None)
                              or f"{backbone.name}: FUNGI features need the backbone's grad_layer (an nn.Linear)")
        # Resolved here, once: the projection (and so the bank identity) records float32 or
        # bfloat16, never "auto", which means different things on different machines.
        self.projection_dtype = resolve_compute_dtype(projection_dtype, backbone.device)
        self.projection = None if layer is None else make_projection(
            projection,
            in_features=layer.in_features,
            out_features=layer.out_features,
            dim=int(proj_dim or backbone.embed_dim),
            seed=proj_seed,
            bias=layer.bias is not None,
            compute_dtype=self.projection_dtype,
            **(projection_options or {}),
        )

    @property
    def feature_dim(self) -> int:
        """Width of one patch feature of this extractor's kind."""
        if self.features == FeatureKind.EMBEDDINGS:
            return self.backbone.embed_dim
        return self.projection.dim + self.backbone.embed_dim

    # ---- pixels to the last block
    def network_input(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images (B×S×S×3) normalised as the backbone expects (B×3×S×S on its
        device); a float batch is taken as network input already."""
        if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
            return self.backbone.prepare(images)
        return images.to(self.backbone.device)

    def last_block_input(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Tokens entering the last block, B×T×D (no autograd).  Worth keeping from the
        support-index embeddings pass: the FUNGI pass then only reruns the last block."""
        with full_float32(self.backbone.device):
            return self.backbone.forward_until_last_block(self.network_input(images))

    # ---- embeddings
    def embeddings(self, images: np.ndarray | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Patch embeddings B×(gh·gw)×D, L2-normalised unless ``normalize=False`` (raw tokens,
        the space negatives for :meth:`fungi` must come from)."""
        return self.embeddings_from_last_block_input(self.last_block_input(images), normalize)

    def embeddings_from_last_block_input(self, last_block_input: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """:meth:`embeddings` from :meth:`last_block_input`'s output."""
        with torch.no_grad(), full_float32(self.backbone.device):
            tokens = self.backbone.forward_last_block(last_block_input.to(self.backbone.device, self.backbone.dtype))
        patches = tokens[:, self.backbone.num_prefix_tokens :]
        return l2_normalize(patches) if normalize else patches

    # ---- FUNGI
    def fungi(
        self,
        images: np.ndarray | torch.Tensor,
        negatives: Negatives,
        patch_index: Sequence[torch.Tensor] | None = None,
        generator=None,
    ) -> FungiOutput:
        """FUNGI features of a batch.

        ``negatives``: neighbour embeddings (in the space ``fungi.negatives`` names)
        B×M×K×D (K retrieved per token, M = n loss tokens; paper: one of K kept at random,
        K=2; research-code: K=``research_code_neighbours``, scrambled as in
        ``segfungi.ops.negatives``) or B×M×D (paper only: already one per token), or a
        callable given the raw loss tokens B×n×D (CLS + patches, n = 1 + gh·gw, no grad)
        returning such a tensor.  ``patch_index``: per image, a LongTensor of patch
        indices (0..gh·gw−1) to project; None = all patches.  ``generator``: one
        ``torch.Generator`` for the batch, or one per image (then an image's features do
        not depend on its batch); None means a fixed seed 0.
        """
        return self.fungi_from_last_block_input(self.last_block_input(images), negatives, patch_index, generator)

    def fungi_from_last_block_input(
        self,
        last_block_input: torch.Tensor,
        negatives: Negatives,
        patch_index: Sequence[torch.Tensor] | None = None,
        generator=None,
    ) -> FungiOutput:
        """:meth:`fungi` from :meth:`last_block_input`'s output (e.g. kept as float16 on disk)."""
        kept, embeddings, losses = self.kept_gradients(last_block_input, negatives, generator, patch_index)
        return FungiOutput(list(self.project(kept).split(kept.counts)), embeddings, losses)

    def kept_gradients(
        self,
        last_block_input: torch.Tensor,
        negatives: Negatives,
        generator=None,
        patch_index: Sequence[torch.Tensor] | None = None,
    ) -> tuple[KeptGradients, torch.Tensor, torch.Tensor]:
        """The gradient pass of a batch, kept patches only (``patch_index``: per image, the
        patches to keep; None: all): (their gradients and embeddings, the B×P×D normalised
        embeddings of every patch, the per-image losses)."""
        grads, patch_tokens, losses = self.patch_gradients(last_block_input, negatives, generator)
        embeddings = l2_normalize(patch_tokens)
        index = self._patch_index(patch_index, len(patch_tokens))
        kept = KeptGradients(torch.cat([d[i] for d, i in zip(grads.delta, index)]),
                             torch.cat([a[i] for a, i in zip(grads.inputs, index)]),
                             torch.cat([e[i] for e, i in zip(embeddings, index)]), [len(i) for i in index])
        return kept, embeddings, losses

    def project(self, kept: KeptGradients) -> torch.Tensor:
        """FUNGI features of the kept patches, R×(proj_dim + D): their projected gradients
        (one streamed pass over all rows) joined to their embeddings, each L2-normalised."""
        with full_float32(self.backbone.device):
            return fungi_concat([self.projection.project_tokens(kept.delta, kept.inputs)], kept.embeddings)

    def patch_gradients(
        self, last_block_input: torch.Tensor, negatives: Negatives, generator=None
    ) -> tuple[TokenGradients, torch.Tensor, torch.Tensor]:
        """The loss forward/backward from the last block's input, before any projection.

        Returns the patch tokens' :class:`TokenGradients` (δ: B×P×Dout, a: B×P×Din), the raw
        patch tokens B×P×D and the per-image losses (B,), all detached.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("FeatureExtractor.fungi needs autograd: do not call it under torch.inference_mode()")
        bb = self.backbone
        inputs = last_block_input.to(bb.device, bb.dtype)  # float16 caches are widened

        def per_image_loss(tokens: torch.Tensor) -> torch.Tensor:
            loss_tokens = self._loss_tokens(tokens)
            kept, mask = self._pick_negatives(negatives, loss_tokens.detach(), generator)
            return seg_simclr_loss(l2_normalize(self.head(loss_tokens)), l2_normalize(self.head(kept)), self.tau,
                                   neg_mask=mask, tau_in_denominator=self.variant == "paper")

        with full_float32(bb.device):
            grads, tokens, losses = gradient_pass(bb.grad_layer, lambda: bb.forward_last_block(inputs), per_image_loss)
        patches = slice(bb.num_prefix_tokens, None)
        patch_grads = TokenGradients(grads.delta[:, patches], grads.inputs[:, patches], grads.bias)
        return patch_grads, tokens.detach()[:, patches], losses

    def identity(self) -> dict[str, Any]:
        """Everything a bank and its queries must share (the record `segfungi.bank` types)."""
        ident = {"backbone": self.backbone.identity(), "kind": self.features, "feature_dim": self.feature_dim}
        if self.features == FeatureKind.FUNGI:
            ident.update(
                head_dim=self.head_dim,
                head_seed=self.head_seed,
                tau=self.tau,
                loss="seg-simclr(cls+patches vs 1-of-K neighbours)",
                projection=self.projection.identity(),
            )
            # Paper variant with raw negatives (the only FUNGI pass before these settings)
            # names neither, so banks built then keep their hash.
            if (self.variant, self.negatives) != ("paper", "raw"):
                ident.update(variant=self.variant, negatives=self.negatives)
            if self.variant == "research-code":
                ident.update(
                    loss="seg-simclr-research-code(cls+patches vs scrambled K-neighbour rows, no tau in logsumexp)",
                    research_code_neighbours=self.rc_neighbours,
                    research_code_kept=self.rc_kept,
                    research_code_keep_fraction=self.rc_keep_fraction,
                )
        return ident

    # ---- pieces of the FUNGI pass

    def _loss_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLS + patch tokens (register tokens are not part of the positive set)."""
        patches = tokens[:, self.backbone.num_prefix_tokens :]
        if not self.backbone.has_class_token:
            return patches
        return torch.cat([tokens[:, :1], patches], dim=1)

    def _pick_negatives(
        self, negatives: Negatives, loss_tokens: torch.Tensor, generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B×m×D negatives, B×m mask of the rows used or None = all) as the variant says."""
        with torch.no_grad():
            candidates = negatives(loss_tokens) if callable(negatives) else negatives
            candidates = torch.as_tensor(candidates).to(device=loss_tokens.device, dtype=loss_tokens.dtype)
        batch, _, dim = loss_tokens.shape
        if candidates.ndim == 3 and self.variant == "paper":
            candidates = candidates.unsqueeze(2)
        if candidates.ndim != 4 or candidates.shape[0] != batch or candidates.shape[-1] != dim:
            form = "B×M×K×D or B×M×D" if self.variant == "paper" else f"B×M×K×D (K={self.rc_neighbours})"
            raise ValueError(f"negatives must be {form} with B={batch}, D={dim}; got {tuple(candidates.shape)}")
        check_space(candidates, loss_tokens, self.negatives)
        if self.variant == "paper":
            return keep_one(candidates, generator), None
        if candidates.shape[2] != self.rc_neighbours:
            raise ValueError(f"research-code negatives need K={self.rc_neighbours} neighbours per token "
                             f"(fungi.research_code_neighbours), got {candidates.shape[2]}")
        return research_code_negatives(candidates, self.rc_kept, self.rc_keep_fraction, generator)

    def _patch_index(self, patch_index: Sequence[torch.Tensor] | None, batch: int) -> list[torch.Tensor]:
        num_patches, device = self.backbone.num_patches, self.backbone.device
        if patch_index is None:
            return [torch.arange(num_patches, device=device)] * batch
        if len(patch_index) != batch:
            raise ValueError(f"patch_index has {len(patch_index)} entries for {batch} images")
        index = [torch.as_tensor(idx, dtype=torch.long).reshape(-1).to(device) for idx in patch_index]
        for idx in index:
            if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_patches):
                raise ValueError(f"patch_index values must lie in 0..{num_patches - 1}")
        return index


def _check_variant(negatives: str, variant: str, neighbours: int, kept: int, keep_fraction: float) -> None:
    if negatives not in SPACES:
        raise ConfigError(f"fungi.negatives must be one of {', '.join(SPACES)}, got {negatives!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"fungi.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant != "research-code":
        return
    if negatives != "normalised":
        raise ConfigError("fungi.variant=research-code feeds normalised negatives, as the authors' code does; "
                          f"fungi.negatives={negatives} contradicts it")
    if not 0 < int(kept) <= int(neighbours):
        raise ConfigError(f"fungi.research_code_kept ({kept}) must be in 1..fungi.research_code_neighbours "
                          f"({neighbours})")
    if not 0 < float(keep_fraction) <= 1:
        raise ConfigError(f"fungi.research_code_keep_fraction must be in (0, 1], got {keep_fraction}")
