"""The timm-naflexvit family: timm's ``NaFlexVit`` (C-RADIO v3/v4, NaFlex SigLIP-2)
split where FUNGI needs it.

A NaFlexVit has no fixed input size: in its standard mode (a B×3×H×W batch, no patch
coordinates) ``embeds`` patchifies the images and interpolates the position embedding
table to their grid on every forward (RADIO: a 128×128 table, resized to the square of
the larger grid side and cropped top-left, bilinear). So the working resolution is only
the input size segfungi feeds (32 × the patch size by default), and nothing is resized
at load time. No attention mask is used in this mode (all patches are valid).

The prefix tokens are the CLS token and the registers (RADIO's per-teacher summary
tokens beyond the first are registers), ``num_prefix_tokens`` in all. The gradient layer
is ``blocks[-1].attn.proj``. A RoPE NaFlexVit's last block gets its rotary embedding
recomputed from the grid (timm's ``rope.get_embed``), so the FUNGI pass can start from a
cached last-block input.
"""

from __future__ import annotations

import torch
from timm.models.naflexvit import NaFlexVit
from torch import nn

from segfungi.backbones import Backbone, load_timm
from segfungi.infra.errors import ConfigError


class NaFlexBackbone(Backbone):
    """A frozen timm NaFlexVit with :class:`segfungi.backbones.Backbone`'s interface."""

    family = "timm-naflexvit"
    model_class = NaFlexVit

    @staticmethod
    def patch_size_of(model: nn.Module) -> int:
        patch_h, patch_w = model.embeds.patch_size
        if patch_h != patch_w:
            raise ConfigError(f"only square patches are supported, got {patch_h}×{patch_w}")
        return int(patch_h)

    @staticmethod
    def resize(model: nn.Module, size: int) -> None:
        """Nothing to resize: the position embedding follows each input's grid."""

    def _input_geometry(self, model: nn.Module, img_size: int | None):
        if img_size is None:
            raise ConfigError(f"{self.name}: a NaFlexVit has no fixed input size; give img_size")
        patch = self.patch_size_of(model)
        return (img_size, img_size), (patch, patch)

    def _first_weight(self) -> torch.Tensor:
        return self.model.embeds.proj.weight

    @property
    def has_class_token(self) -> bool:
        return getattr(self.model.embeds, "cls_token", None) is not None

    def _block_arguments(self, depth_index: int, rope) -> dict:
        if rope is None:
            return {}
        return {"rope": rope[depth_index] if self.model.rope_is_mixed else rope}

    def _last_rope(self):
        """The last block's rotary embedding at this grid (None: the model has no RoPE)."""
        if self.model.rope is None:
            return None
        with torch.no_grad():
            return self.model.rope.get_embed(shape=self.grid)

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        low = self.compute_dtype != torch.float32
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low):
            embeds = m._forward_embeds(x, patch_coord=None, patch_valid=None, attn_mask=None)
            if embeds["attn_mask"] is not None:
                raise ConfigError(f"{self.name}: the NaFlexVit made an attention mask for a plain image batch; "
                                  "segfungi supports its standard (unmasked) mode only")
            h, rope = embeds["patches"], embeds["rope_embeds"]
            for i, block in enumerate(m.blocks[:-1]):
                h = block(h, **self._block_arguments(i, rope))
        return h.to(self.dtype) if low else h

    def forward_last_block(self, h: torch.Tensor) -> torch.Tensor:
        last = len(self.model.blocks) - 1
        return self.model.norm(self.model.blocks[-1](h, **self._block_arguments(last, self._last_rope())))


def load(name: str, options, model: nn.Module | None = None) -> NaFlexBackbone:
    return load_timm(NaFlexBackbone, name, options, model)
