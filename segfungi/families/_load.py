"""Loading a backbone by name: the family a name belongs to builds it.

`load_backbone(name, …)` dispatches: a name with a family's prefix (``hf:``,
``open_clip:``) goes to that family; any other name is created by timm and goes to the
family of the class timm creates. `pretrained_tag` and `check_weights_source` read what a
name promises about its weights, without loading anything. These live above
`segfungi.backbones` (the frozen encoder and its timm mechanics), which the families'
loaders build on, so that no module imports a layer above its own.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from segfungi.backbones import PatchEncoder, create_timm_model
from segfungi.families import (
    LoadOptions,
    family_for_prefixed_name,
    family_for_timm_class,
    implied_weights,
    timm_classes,
)
from segfungi.infra.errors import ConfigError

__all__ = ["check_weights_source", "load_backbone", "pretrained_tag", "timm_family_of"]


def load_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = False,
    img_size: int | None = None,
    init_seed: int = 0,
    device: str | torch.device = "cpu",
    model_kwargs: dict | None = None,
    dtype: str | torch.dtype = "float32",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> PatchEncoder:
    """Build a frozen backbone ``name`` at ``img_size`` (default 32 × patch size).

    ``name``: a timm name (its family is picked from the class timm creates: a
    VisionTransformer, an Eva such as DINOv3 or EVA-02, a NaFlexVit such as C-RADIO), or
    ``hf:<hub id or snapshot folder>``, or ``open_clip:<arch>[:<pretrained tag or
    file>]`` (segfungi.families). Weights: ``weights`` (a local checkpoint: timm state
    dict, original DINO layout, or safetensors — detected from the content; for ``hf:``
    also a snapshot folder), or ``pretrained=True`` (the hub), or neither (random init
    seeded by ``init_seed``).  ``model_kwargs`` override the architecture arguments (e.g.
    ``depth=2`` for tests) and are part of the identity.
    ``dtype`` (setting ``backbone.dtype``): autocast dtype of the blocks before the last
    (float32 = none); bfloat16 is ~3× faster on CPUs with AMX, at a feature error that
    benchmarks/README.md reports. ``mean``, ``std`` (settings ``data.mean``, ``data.std``):
    the input normalisation instead of the model's own (its ``pretrained_cfg``); recorded
    in the identity when given.
    """
    if weights is not None and pretrained:
        raise ConfigError(f"{name}: give either weights= (a file) or pretrained=True, not both")
    options = LoadOptions(weights=weights, pretrained=bool(pretrained), img_size=img_size, init_seed=int(init_seed),
                          device=device, model_kwargs=dict(model_kwargs or {}), dtype=dtype, mean=mean, std=std)
    family = family_for_prefixed_name(name)
    if family is not None:
        return family.load(name, options)
    model = create_timm_model(name, pretrained=pretrained, init_seed=init_seed, model_kwargs=options.model_kwargs)
    return timm_family_of(model, name).load(name, options, model=model)


def timm_family_of(model: nn.Module, name: str):
    """The backbone family of a timm model, by its class (or a base class)."""
    family = family_for_timm_class([cls.__name__ for cls in type(model).__mro__])
    if family is None:
        raise ConfigError(
            f"{name}: is a {type(model).__name__}, but segfungi needs a timm VisionTransformer or another ViT "
            f"class a backbone family handles ({', '.join(timm_classes())}); pick such a model, or register a "
            "family for it (segfungi.families.register_backbone_family) or wrap it in segfungi.CustomBackbone"
        )
    return family


def pretrained_tag(name: str) -> str | None:
    """The pretrained weights timm has for `name`, by their tag ('dino', 'lvd142m',
    'augreg_in21k_ft_in1k', ...), or None when timm has none (an untrained architecture).
    A bare architecture name stands for its default tag, the weights `pretrained=True` loads.
    A family-prefixed name: ``hf:<hub id>`` names the hub's weights (the id);
    ``open_clip:<arch>:<tag>`` the tag; ``hf:<folder>`` and ``open_clip:<arch>`` none."""
    family = family_for_prefixed_name(name)
    if family is not None:
        rest = name[len(family.prefix):]
        if family.name == "hf":
            return None if Path(rest).expanduser().is_dir() else rest
        if family.name == "open_clip":
            return rest.partition(":")[2] or None
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know: the name still claims weights
        return timm.models.split_model_name_tag(name)[1] or name
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return None
    return cfg.tag or name


def check_weights_source(name: str, *, weights, pretrained: bool, random_init: bool | None) -> None:
    """Refuse to run a random init under a name that promises trained weights, unless asked.

    random_init: True allows a random init (`--random-init`); None (the default) allows it
    only for names timm has no pretrained weights for; False never. A forgotten `--weights`
    would otherwise give results of an untrained network labelled with a trained one's name."""
    if weights or pretrained or random_init or implied_weights(name):
        return
    fixes = "--weights FILE (a local checkpoint), --pretrained (download the hub weights)"
    if random_init is False:
        raise ConfigError(f"backbone {name}: no weights given and backbone.random_init is false: pass {fixes}, "
                          "or --random-init for a random-init network")
    tag = pretrained_tag(name)
    if tag is not None:
        raise ConfigError(
            f"backbone {name}: names pretrained weights ({'timm tag' if ':' not in name else 'hub'} {tag!r}) but "
            "none were given, so it would "
            f"run as an untrained random init: pass {fixes}, or --random-init (backbone.random_init: true) "
            "to use a random init on purpose"
        )
