"""Settings of ``segfungi classify``. Every key of each modality, with its paper value,
type, checks and doc, is declared in :mod:`segfungi.settings_schema` (``CLASSIFY``), next
to segmentation's; ``configs/classify_{image,text,audio}.yaml`` are generated from it. A
``--config`` file (one top-level ``classify:`` mapping) overrides a subset, then named
flags and ``a.b=value`` overrides (an optional leading ``classify.`` is accepted).
Merging and per-key checks are segfungi.config's: unknown keys are refused naming the
file and the allowed keys, values must have the default's type (``model_kwargs: {}`` is
a free-form mapping). ``validate`` adds the cross-key checks.

Loss hyper-parameters follow the paper: Table 22 (images), Table 24 (text),
Table 13 (audio). ``proj_dim: null`` projects each loss's gradient to the
encoder's embedding size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from segfungi import config as _config
from segfungi import settings_schema
from segfungi.classify.modalities import get_modality
from segfungi.config import CONFIG_DIR
from segfungi.infra.errors import ConfigError

SECTION = settings_schema.CLASSIFY_SECTION

__all__ = ["CONFIG_DIR", "default_config_path", "defaults", "load_settings", "parse_override", "schema", "validate"]


def schema(modality: str) -> dict:
    """The modality's settings schema (sections -> keys)."""
    get_modality(modality)  # refuses an unknown name, listing the registered ones
    return settings_schema.classify_schema(modality)


def default_config_path(modality: str) -> Path:
    """``configs/classify_<modality>.yaml``: the modality's defaults, written out."""
    get_modality(modality)
    return CONFIG_DIR / f"classify_{modality}.yaml"


def defaults(modality: str) -> dict:
    """A fresh copy of the modality's defaults."""
    return settings_schema.defaults(schema(modality))


def parse_override(text: str) -> dict:
    """``knn.k=10`` or ``classify.knn.k=10`` -> nested dict; the value is parsed as YAML."""
    return _config.parse_override(text, section=SECTION)


def load_settings(modality: str, config: str | Path | None = None, overrides: Iterable[dict | str] = ()) -> dict:
    """The modality's defaults, then the config file (a path or a preset name under
    configs/), then each override (dict or ``a.b=value``); cross-checked by ``validate``."""
    settings = _config.load_config(config, overrides, schema=schema(modality), section=SECTION)
    validate(modality, settings)
    return settings


def validate(modality: str, s: dict) -> None:
    """Cross-key checks that the schema's per-key checks cannot do."""
    from segfungi.classify.features import feature_names
    from segfungi.classify.losses import get_loss, loss_names

    allowed = get_modality(modality).extractor_class().supported_losses()
    losses = s["fungi"]["losses"]
    for loss in losses:
        if loss not in allowed:
            raise ConfigError(f"fungi.losses: '{loss}' is not available for {modality} (choose from {', '.join(allowed)})")
    if len(set(losses)) != len(losses):
        raise ConfigError(f"fungi.losses lists a loss twice: {losses}")
    for name in loss_names():
        check = get_loss(name).check
        if check is not None and name in s["fungi"]:
            check(s["fungi"][name], f"fungi.{name}")
    combos = s["knn"]["combinations"]
    if combos is not None:
        names = feature_names()
        for combo in combos:
            for part in str(combo).split("+"):
                if part not in names:
                    raise ConfigError(f"knn.combinations: unknown feature '{part}' in '{combo}' (use {', '.join(names)})")
                if part != "embedding" and part not in losses:
                    raise ConfigError(f"knn.combinations: '{combo}' needs loss '{part}', which is not in fungi.losses")
