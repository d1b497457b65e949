"""The backbone-family registry: `BackboneFamily` entries, `LoadOptions` and the lookups by
name and timm class (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segfungi.infra.registry import Registry, load_reference

__all__ = [
    "BackboneFamily",
    "FAMILIES",
    "LoadOptions",
    "backbone_families",
    "family_for_prefixed_name",
    "family_for_timm_class",
    "get_backbone_family",
    "hf_weight_files",
    "implied_weights",
    "register_backbone_family",
    "timm_classes",
    "unregister_backbone_family",
]


@dataclass(frozen=True)
class LoadOptions:
    """What a loader is asked for (the `backbone` settings and `data.image_size`,
    `data.mean`, `data.std`); see :func:`segfungi.families.load_backbone`."""

    weights: str | None = None  # a local file or folder
    pretrained: bool = False  # the hub's weights (downloaded, or from its cache)
    img_size: int | None = None  # None: 32 × the patch size
    init_seed: int = 0
    device: Any = "cpu"
    model_kwargs: dict = field(default_factory=dict)
    dtype: Any = "float32"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class BackboneFamily:
    """One family's facts. ``loader``: ``"module:function"``, called as
    ``function(name, options, model=None)`` (``model``: the timm model already created,
    for families chosen by ``timm_class``). ``prefix``: names starting with it are this
    family's. ``timm_class``: the timm model class this family handles. ``extra``: the
    pip extra it needs (``pip install segfungi[extra]``). ``examples`` and ``tested``
    feed the README's Models table."""

    name: str
    description: str
    loader: str
    prefix: str | None = None
    timm_class: str | None = None
    extra: str | None = None
    examples: tuple[str, ...] = ()
    tested: str = ""

    def load(self, name: str, options: LoadOptions, model=None):
        return load_reference(self.loader)(name, options, model=model)


FAMILIES: Registry[BackboneFamily] = Registry("backbone family")


def register_backbone_family(family: BackboneFamily) -> BackboneFamily:
    """Make a family available (its prefix, or its timm class, picks it)."""
    if not isinstance(family, BackboneFamily):
        raise TypeError(f"register_backbone_family takes a BackboneFamily, got {type(family).__name__}")
    return FAMILIES.register(family.name, family)


def unregister_backbone_family(name: str) -> None:
    FAMILIES.unregister(name)


def backbone_families() -> tuple[str, ...]:
    """The registered family names, in registration order (nothing heavy is imported)."""
    return FAMILIES.names()


def get_backbone_family(name: str) -> BackboneFamily:
    return FAMILIES.get(name)


def family_for_prefixed_name(name: str) -> BackboneFamily | None:
    """The family whose prefix `name` starts with; None for a plain (timm) name."""
    for family_name in FAMILIES.names():
        family = FAMILIES.get(family_name)
        if family.prefix and str(name).startswith(family.prefix):
            return family
    return None


def family_for_timm_class(class_names: list[str]) -> BackboneFamily | None:
    """The family for a timm model whose class (or a base class) is named in `class_names`."""
    for class_name in class_names:
        for family_name in FAMILIES.names():
            family = FAMILIES.get(family_name)
            if family.timm_class == class_name:
                return family
    return None


def timm_classes() -> list[str]:
    """'VisionTransformer (timm-vit)', … for error messages."""
    return [f"{f.timm_class} ({f.name})" for f in map(FAMILIES.get, FAMILIES.names()) if f.timm_class]


def implied_weights(name: str) -> str | None:
    """The local weights a backbone name itself points at, read without loading anything:
    ``hf:<folder>`` holding a snapshot's weights → the folder; ``open_clip:<arch>:<file>``
    → the file; else None (the weights come from backbone.weights, the hub or a random
    init)."""
    name = str(name)
    if name.startswith("hf:"):
        folder = Path(name[3:]).expanduser()
        return str(folder) if folder.is_dir() and hf_weight_files(folder) else None
    if name.startswith("open_clip:"):
        _, _, tag = name[len("open_clip:"):].partition(":")
        return tag if tag and Path(tag).expanduser().is_file() else None
    return None


HF_WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")


def hf_weight_files(folder: Path) -> list[Path]:
    """A Hugging Face snapshot's weight files (sharded or not), sorted."""
    return sorted({p for pattern in HF_WEIGHT_PATTERNS for p in Path(folder).glob(pattern) if p.is_file()})
