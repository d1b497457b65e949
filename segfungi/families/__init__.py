"""Backbone families: how segfungi builds, splits and reads each kind of ViT.

A family is one registration of a :class:`BackboneFamily`, a frozen record of its facts
(which names it owns, which pip extra it needs, what the tests check) and a reference
``"module:function"`` to its loader. The loader gets the name and the
:class:`LoadOptions` and returns a :class:`segfungi.backbones.PatchEncoder`: a frozen
model that can

* prepare images (its own normalisation, or ``data.mean``/``data.std``),
* run up to the last block's input without autograd (``forward_until_last_block``),
* run the last block and the final norm (``forward_last_block``),
* name the FUNGI gradient layer (``grad_layer``: the last block's attention output
  projection, an ``nn.Linear`` applied token by token),
* and say its token layout (``num_prefix_tokens``, ``has_class_token``) and grid at
  the working resolution (a 32×32 patch grid by default: 512² for /16, 448² for /14).

Which family a name belongs to: a name with a family's ``prefix`` (``hf:``,
``open_clip:``, ``custom:``) is that family's; any other name is a timm name, and the
family is the one whose ``timm_class`` is the class of the model timm creates (so
``vit_small_patch16_dinov3`` is an ``Eva`` and goes to ``timm-eva``).

The registry and its entries live in ``segfungi.families._registry``. Names load no
torch: built-in families are registered by reference (``segfungi.families._builtin``),
their loaders import torch, timm, transformers or open_clip only when a model is loaded.
"""

from __future__ import annotations

from segfungi.families import _builtin  # noqa: F401  (registers the built-in families)
from segfungi.families._registry import (
    FAMILIES,
    BackboneFamily,
    LoadOptions,
    backbone_families,
    family_for_prefixed_name,
    family_for_timm_class,
    get_backbone_family,
    hf_weight_files,
    implied_weights,
    register_backbone_family,
    timm_classes,
    unregister_backbone_family,
)
from segfungi.infra.lazy import lazy_exports

# Loading by name (the dispatch over families) imports torch and timm: on first use.
_LOADING = ("check_weights_source", "load_backbone", "pretrained_tag", "timm_family_of")

__all__ = [
    "FAMILIES",
    "BackboneFamily",
    "LoadOptions",
    "backbone_families",
    "check_weights_source",
    "family_for_prefixed_name",
    "family_for_timm_class",
    "get_backbone_family",
    "hf_weight_files",
    "implied_weights",
    "load_backbone",
    "pretrained_tag",
    "register_backbone_family",
    "timm_classes",
    "timm_family_of",
    "unregister_backbone_family",
]

__getattr__, __dir__ = lazy_exports(__name__, {name: "._load" for name in _LOADING})
