"""A thin split of a timm VisionTransformer: everything before the last block runs
without autograd, the last block (whose attention output projection is the
gradient source) and the final norm run with it, and the pooled embedding follows
the model's own pooling (``forward_head(..., pre_logits=True)``: CLS token, average,
attention pooling …).

Used for the audio spectrogram transformer and for image models given as timm
modules; images loaded by name go through :mod:`segfungi.backbones`, whose
``Backbone`` offers the same methods (see :func:`as_split_vit`).
"""

from __future__ import annotations

import torch
from torch import nn


class TimmViT:
    def __init__(self, model: nn.Module, name: str | None = None, weights_id: str = "random-init", extra_identity: dict | None = None, device: str | torch.device = "cpu"):
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.name = name or type(model).__name__
        self.weights_id = weights_id
        self.embed_dim = int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        grid = getattr(getattr(model, "patch_embed", None), "img_size", None)
        self.img_size = grid[0] if isinstance(grid, (tuple, list)) else grid
        self._extra = dict(extra_identity or {})

    @property
    def grad_layer(self) -> nn.Linear:
        return self.model.blocks[-1].attn.proj

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        with torch.no_grad():
            h = m.patch_embed(x.to(self.device))
            h = m._pos_embed(h)
            h = m.patch_drop(h)
            h = m.norm_pre(h)
            for blk in m.blocks[:-1]:
                h = blk(h)
        return h

    def forward_last_block(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(self.model.blocks[-1](h))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(tokens, pre_logits=True)

    def identity(self) -> dict:
        out = {
            "name": self.name,
            "weights_id": self.weights_id,
            "img_size": self.img_size,
            "embed_dim": self.embed_dim,
            "global_pool": getattr(self.model, "global_pool", None),
            "grad_layer": "blocks[-1].attn.proj",
        }
        out.update(self._extra)
        return out


class BackboneSplit:
    """Adapter giving a :class:`segfungi.backbones.Backbone` the pooling step."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.model = backbone.model
        self.name = backbone.name
        self.embed_dim = int(backbone.embed_dim)
        self.mean = tuple(backbone.mean)
        self.std = tuple(backbone.std)
        size = backbone.img_size
        self.img_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.device = next(backbone.model.parameters()).device

    @property
    def grad_layer(self) -> nn.Linear:
        return self.backbone.grad_layer

    def forward_until_last_block(self, x):
        with torch.no_grad():
            return self.backbone.forward_until_last_block(x.to(self.device))

    def forward_last_block(self, h):
        return self.backbone.forward_last_block(h)

    def pool(self, tokens):
        head = getattr(self.model, "forward_head", None)
        if head is not None:
            return head(tokens, pre_logits=True)
        return tokens[:, 0]

    def identity(self) -> dict:
        out = dict(self.backbone.identity())
        out["global_pool"] = getattr(self.model, "global_pool", None)
        return out


def as_split_vit(obj, device="cpu"):
    """A timm ViT module, a ``Backbone`` or an already split model -> split model."""
    if isinstance(obj, (TimmViT, BackboneSplit)):
        return obj
    if isinstance(obj, nn.Module):
        return TimmViT(obj, device=device)
    if hasattr(obj, "forward_until_last_block") and hasattr(obj, "forward_last_block"):
        return BackboneSplit(obj)
    raise TypeError(f"cannot use {type(obj).__name__} as a ViT encoder")
