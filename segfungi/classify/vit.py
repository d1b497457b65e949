"""ViT encoders of the image and audio extractors: the segmentation side's split
(:class:`segfungi.backbones.Backbone`: everything before the last block without
autograd, the last block, whose attention output projection is the gradient source,
and the final norm with it), followed by the model's own pooling
(``forward_head(..., pre_logits=True)``: CLS token, average, attention pooling …).

* images loaded by name: :func:`segfungi.families.load_backbone` gives a ``Backbone``;
* a timm VisionTransformer module given as is, and the spectrogram transformer:
  :class:`TimmViT`, a ``Backbone`` over a ready-made module. Its inputs may be
  rectangular (filter banks are ``n_mels × frames``), which ``Backbone``'s
  constructor refuses, so it sets up the attributes the inherited split uses itself.
"""

from __future__ import annotations

import torch
from torch import nn

from segfungi.backbones import Backbone
from segfungi.custom import parameters_digest
from segfungi.infra.weights import WeightsSource


def pool(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's pooled embedding of its final-normed tokens ``B×T×D`` -> ``B×D``."""
    return model.forward_head(tokens, pre_logits=True)


def vit_identity(vit: Backbone) -> dict:
    """The encoder's identity, with the pooling (part of every feature)."""
    return {**vit.identity(), "global_pool": getattr(vit.model, "global_pool", None)}


class TimmViT(Backbone):
    """A frozen timm ViT module with :class:`Backbone`'s split and gradient layer."""

    def __init__(self, model: nn.Module, name: str | None = None, weights_id: str | None = None,
                 extra_identity: dict | None = None, device: str | torch.device = "cpu"):
        """`weights_id`: a `segfungi.infra.weights.WeightsSource` id; None names the module's own
        parameters by their digest (a module given ready, its weights unknown to us)."""
        # Backbone.__init__ is not called: it refuses rectangular inputs. These are the
        # attributes the inherited forward_until_last_block / forward_last_block use.
        self.model = model.eval().requires_grad_(False).to(device)
        self.compute_dtype = torch.float32
        self.name = name or type(model).__name__
        self.weights_id = weights_id or WeightsSource.parameters(parameters_digest(model)[:16]).id
        self.embed_dim = int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        grid = model.patch_embed.img_size
        self.img_size = grid[0] if isinstance(grid, (tuple, list)) else grid
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.model_kwargs = {}
        self._extra = dict(extra_identity or {})

    def identity(self) -> dict:
        return {**super().identity(), **self._extra}


def as_split_vit(obj, device="cpu") -> Backbone:
    """A ``Backbone`` (as is) or a timm ViT module (wrapped in :class:`TimmViT`)."""
    if isinstance(obj, Backbone):
        return obj
    if isinstance(obj, nn.Module):
        return TimmViT(obj, device=device)
    raise TypeError(f"cannot use {type(obj).__name__} as a ViT encoder (give a timm ViT module or a segfungi Backbone)")
