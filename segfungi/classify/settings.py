"""Settings of ``segfungi classify``. The complete defaults of each modality live in
``configs/classify_{image,text,audio}.yaml`` (one top-level ``classify:`` mapping,
every key with its paper value and a comment); a ``--config`` file overrides a
subset, then named flags and ``a.b=value`` overrides (an optional leading
``classify.`` is accepted). Merging and per-key checks are segfungi.config's: unknown
keys are refused naming the file and the allowed keys, values must have the default's
type (``null`` defaults take anything; ``model_kwargs: {}`` is a free-form mapping).
``validate`` adds the cross-key checks.

Loss hyper-parameters follow the paper: Table 22 (images), Table 24 (text),
Table 13 (audio). ``proj_dim: null`` projects each loss's gradient to the
encoder's embedding size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from segfungi import config as _config
from segfungi.classify.modalities import get_modality, modality_names
from segfungi.config import CONFIG_DIR
from segfungi.errors import ConfigError

SECTION = "classify"
# keys that take null besides a value (null: no few-shot run / no report written)
_NULLABLE = ("knn.shots", "run.out")

__all__ = ["CONFIG_DIR", "default_config_path", "defaults", "load_settings", "parse_override", "validate"]


def default_config_path(modality: str) -> Path:
    """``configs/classify_<modality>.yaml``: the modality's complete defaults."""
    get_modality(modality)  # refuses an unknown name, listing the registered ones
    return CONFIG_DIR / f"classify_{modality}.yaml"


def defaults(modality: str) -> dict:
    """A fresh copy of the modality's defaults."""
    return _config.load_config(defaults=default_config_path(modality), section=SECTION)


def parse_override(text: str) -> dict:
    """``knn.k=10`` or ``classify.knn.k=10`` -> nested dict; the value is parsed as YAML."""
    return _config.parse_override(text, section=SECTION)


def load_settings(modality: str, config: str | Path | None = None, overrides: Iterable[dict | str] = ()) -> dict:
    """The modality's defaults, then the config file (a path or a preset name under
    configs/), then each override (dict or ``a.b=value``); cross-checked by ``validate``."""
    settings = _config.load_config(
        config, overrides, defaults=default_config_path(modality), section=SECTION, nullable=_NULLABLE
    )
    validate(modality, settings)
    return settings


def validate(modality: str, s: dict) -> None:
    """Cross-key checks that a per-key type check cannot do."""
    from segfungi.classify.features import feature_names
    from segfungi.classify.losses import get_loss, loss_names
    from segfungi.gradients import make_projection

    allowed = get_modality(modality).extractor_class().supported_losses()
    losses = s["fungi"]["losses"]
    for loss in losses:
        if loss not in allowed:
            raise ConfigError(f"fungi.losses: '{loss}' is not available for {modality} (choose from {', '.join(allowed)})")
    if len(set(losses)) != len(losses):
        raise ConfigError(f"fungi.losses lists a loss twice: {losses}")
    if int(s["knn"]["k"]) < 1:
        raise ConfigError("knn.k must be at least 1")
    if int(s["run"]["batch_size"]) < 1:
        raise ConfigError("run.batch_size must be at least 1")
    if float(s["run"]["progress_interval"]) < 0:
        raise ConfigError("run.progress_interval must be at least 0 seconds")
    for name in loss_names():
        check = get_loss(name).check
        if check is not None and name in s["fungi"]:
            check(s["fungi"][name], f"fungi.{name}")
    kind = s["fungi"]["projection"]
    try:  # a 1×1 projection of that kind: the list of kinds stays segfungi.gradients'
        make_projection(kind, in_features=1, out_features=1, dim=1, seed=0)
    except ValueError as err:
        raise ConfigError(f"fungi.projection: {err}") from None
    if int(s["fungi"]["structured_terms"]) < 1:
        raise ConfigError("fungi.structured_terms must be at least 1")
    combos = s["knn"]["combinations"]
    if combos is not None:
        names = feature_names()
        for combo in combos:
            for part in str(combo).split("+"):
                if part not in names:
                    raise ConfigError(f"knn.combinations: unknown feature '{part}' in '{combo}' (use {', '.join(names)})")
                if part != "embedding" and part not in losses:
                    raise ConfigError(f"knn.combinations: '{combo}' needs loss '{part}', which is not in fungi.losses")
