"""Where a backbone's weights come from, in words, for the first line of every result.

A random-init network under a trained network's name (`vit_small_patch16_224.dino`
without `--weights`) gives numbers that look like results; so every command that prints
results starts with the backbone and its weights source (`backbone_line`), read from what
ran (a bank's identity, a classify report) or, before anything runs, from the settings
(`settings_backbone_line`). Cheap to import: no torch.
"""

from __future__ import annotations

__all__ = ["backbone_line", "settings_backbone_line", "settings_weights_label", "weights_label"]


def weights_label(weights_id: str) -> str:
    """A backbone's weights id (see segfungi.backbones) in words."""
    kind, _, rest = str(weights_id).partition(":")
    if kind == "random-init":
        seed = rest.split(":")[0].removeprefix("seed=")
        return f"random init (seed {seed}), no pretrained weights"
    if kind == "timm-hub":
        return f"pretrained weights {rest}"
    if kind == "file":
        return f"weights {rest.split(':')[0]}"
    return str(weights_id)


def backbone_line(identity: dict) -> str:
    """`backbone NAME: WEIGHTS` from a backbone identity (a bank's
    `identity.extractor.backbone`, a classify encoder); a custom model names itself."""
    name = identity.get("custom") or identity.get("name") or identity.get("model")
    if "weights_id" in identity:
        return f"backbone {name}: {weights_label(identity['weights_id'])}"
    return f"backbone {name}: {identity.get('path') or 'weights as loaded by its library'}"


def settings_weights_label(settings: dict) -> str:
    """Where the weights will come from, as the settings choose them (the order of
    segfungi.components.load_backbone_from: a file, else the hub, else a random init)."""
    backbone = settings["backbone"]
    if backbone["weights"]:
        return f"weights from {backbone['weights']}"
    if backbone["pretrained"]:
        return "pretrained hub weights"
    return f"random init (seed {backbone['init_seed']}), no pretrained weights"


def settings_backbone_line(settings: dict) -> str:
    return f"backbone {settings['backbone']['name']}: {settings_weights_label(settings)}"
