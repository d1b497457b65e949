"""The timm-eva family: timm's ``Eva`` class (DINOv3, EVA-02, Perception Encoder, the
rope ViTs) split where FUNGI needs it.

Position encoding at the working resolution: ``Eva.set_input_size`` resamples the
absolute position embedding if the model has one (EVA-02, PE) and re-grids the rotary
embedding (``rope.update_feat_shape``): EVA-02's and PE's RoPE keep their reference grid
and interpolate the coordinates, DINOv3's normalises the coordinates to [-1, 1] per axis,
so a 32×32 grid covers the same coordinate range as the 16×16 it was trained at (DINOv3
is meant to run at other resolutions this way). Models created with
``dynamic_img_size`` (DINOv3 in timm) compute both per input size in the same way.

Every block takes the rotary embedding as an argument: the last block's is recomputed
from the grid (``_pos_embed`` of a zero patch grid: timm's own code path), so the FUNGI
pass can start from a last-block input cached on disk. Depth-dependent ("mixed") RoPE
gives block i the i-th embedding. The gradient layer is ``blocks[-1].attn.proj`` (after
EVA-02's sub-LN ``attn.norm``: the projection's input is what it multiplies).
"""

from __future__ import annotations

import torch
from timm.models.eva import Eva
from torch import nn

from segfungi.backbones import Backbone, load_timm


class EvaBackbone(Backbone):
    """A frozen timm Eva with :class:`segfungi.backbones.Backbone`'s interface."""

    family = "timm-eva"
    model_class = Eva

    def _rope(self, depth_index: int):
        """The rotary embedding block `depth_index` takes at this grid (None: no RoPE)."""
        m = self.model
        if m.rope is None:
            return None
        cached = getattr(self, "_rope_cache", None)
        if cached is None or cached[0] != self.device:
            shape = (1, *self.grid, self.embed_dim) if m.dynamic_img_size else (1, self.num_patches, self.embed_dim)
            with torch.no_grad():
                _, rope = m._pos_embed(torch.zeros(shape, device=self.device, dtype=self.dtype))
            cached = self._rope_cache = (self.device, rope)
        rope = cached[1]
        return rope[depth_index] if getattr(m, "rope_mixed", False) else rope

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        low = self.compute_dtype != torch.float32
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low):
            h, rope = m._pos_embed(m.patch_embed(x))
            h = m.norm_pre(h)
            mixed = getattr(m, "rope_mixed", False) and rope is not None
            for i, block in enumerate(m.blocks[:-1]):
                h = block(h, rope=rope[i] if mixed else rope)
        return h.to(self.dtype) if low else h

    def forward_last_block(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(self.model.blocks[-1](h, rope=self._rope(len(self.model.blocks) - 1)))


def load(name: str, options, model: nn.Module | None = None) -> EvaBackbone:
    return load_timm(EvaBackbone, name, options, model)
