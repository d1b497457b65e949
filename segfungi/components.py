"""Build the pipeline's parts from a settings dict (see configs/defaults.yaml).

One place maps settings to objects, so build-bank, eval, predict, sweep and few-shot
all construct datasets and feature extractors the same way."""

from __future__ import annotations

import functools
import os

from segfungi.errors import ConfigError


def open_dataset(settings: dict, split: str):
    from segfungi.data import build_dataset

    data = settings["data"]
    if not data["root"]:
        raise ConfigError("data.root is not set: pass --root DIR (or set data.root in the config)")
    dataset = build_dataset(data["dataset"], data["root"], split, on_bad_sample=data["on_bad_sample"])
    return dataset


def open_train_dataset(settings: dict):
    """The training split, reduced to a subset when the settings ask for one (few-shot)."""
    from segfungi.data import subset

    data = settings["data"]
    dataset = open_dataset(settings, data["train_split"])
    if data["subset_file"] or data["subset_fraction"]:
        dataset = subset(
            dataset,
            ids_file=data["subset_file"],
            fraction=data["subset_fraction"],
            seed=data["subset_seed"],
        )
    return dataset


def open_val_dataset(settings: dict):
    """The evaluated split, reduced to the ids listed in data.val_subset_file when set."""
    from segfungi.data import subset

    data = settings["data"]
    dataset = open_dataset(settings, data["val_split"])
    if data["val_subset_file"]:
        dataset = subset(dataset, ids_file=data["val_subset_file"])
    return dataset


def bank_settings(bank) -> dict:
    """The settings a bank was built with (its manifest), completed by today's defaults."""
    from segfungi.bank import MemoryBank
    from segfungi.config import load_config

    bank = bank if isinstance(bank, MemoryBank) else MemoryBank(bank)
    return load_config(base=bank.settings)


def load_backbone_from(settings: dict):
    from segfungi.backbones import check_weights_source

    cfg = settings["backbone"]
    check_weights_source(cfg["name"], weights=cfg["weights"], pretrained=cfg["pretrained"],
                         random_init=cfg["random_init"])
    return _cached_backbone(
        cfg["name"],
        cfg["weights"],
        bool(cfg["pretrained"]) and not cfg["weights"],
        settings["data"]["image_size"],
        cfg["init_seed"],
        cfg["device"],
        _modified_time(cfg["weights"]),
        cfg["dtype"],
    )


def _modified_time(path) -> float | None:
    # Part of the cache key, so a checkpoint replaced on disk is loaded again.
    return os.path.getmtime(path) if path and os.path.exists(path) else None


@functools.lru_cache(maxsize=2)
def _cached_backbone(name, weights, pretrained, img_size, init_seed, device, weights_mtime, dtype="float32"):
    """The backbone is frozen, so a sweep or few-shot run can share one instance
    across its banks and evaluations instead of rebuilding it each time."""
    from segfungi.backbones import load_backbone

    return load_backbone(name, weights=weights, pretrained=pretrained, img_size=img_size,
                         init_seed=init_seed, device=device, dtype=dtype)


def make_extractor(settings: dict, kind: str | None = None, backbone=None):
    from segfungi.features import FeatureExtractor
    from segfungi.gradients import projection_options

    fungi = settings["fungi"]
    backbone = backbone or load_backbone_from(settings)
    return FeatureExtractor(
        backbone,
        kind=kind or settings["bank"]["features"],
        head_dim=fungi["head_dim"],
        head_seed=fungi["head_seed"],
        tau=fungi["temperature"],
        proj_dim=fungi["proj_dim"],
        proj_seed=fungi["proj_seed"],
        projection=fungi["projection"],
        projection_options=projection_options(fungi["projection"], fungi),
        projection_dtype=fungi["projection_dtype"],
        negatives=fungi["negatives"],
        variant=fungi["variant"],
        research_code_neighbours=fungi["research_code_neighbours"],
        research_code_kept=fungi["research_code_kept"],
        research_code_keep_fraction=fungi["research_code_keep_fraction"],
    )


def support_neighbours(settings: dict) -> int:
    """K, the neighbours the support index retrieves per loss token, for the FUNGI variant."""
    fungi = settings["fungi"]
    if fungi["variant"] == "research-code":
        return int(fungi["research_code_neighbours"])
    return int(fungi["support_neighbours"])
