"""Shared fixtures: one small generated VOC-layout dataset and banks built once per run."""

from __future__ import annotations

import os

import pytest
import torch

from segfungi.config import load_config

# One intra-op thread, here and in the subprocesses tests start: the models are tiny,
# and on 2 cores that other processes share OpenMP barriers make 2 threads ~10x slower.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny_settings(root, **sections) -> dict:
    """Demo settings (random-init ViT-Tiny/16 at 512², the real 32×32 grid) on `root`."""
    overrides = [{"data": {"root": str(root)}}, {"bank": {"shard_images": 4, "batch_size": 4}}]
    overrides += [{section: values} for section, values in sections.items()]
    return load_config("demo", overrides)


def accepted_as_setting_and_flag(dotted: str, flag: str, value: str) -> bool:
    """Whether `--set dotted=value` loads and `segfungi build-bank flag value` parses; the
    two must agree (both read the schema's choices). A refusal names the allowed values."""
    from segfungi.cli import build_parser
    from segfungi.infra.errors import ConfigError

    try:
        build_parser().parse_args(["build-bank", flag, value])
    except SystemExit:
        parsed = False
    else:
        parsed = True
    try:
        section, key = dotted.split(".")
        loaded = load_config(overrides=[f"{dotted}={value}"])[section][key] == value
    except ConfigError as err:
        assert f"'{dotted}' must be one of " in str(err), err
        loaded = False
    assert parsed == loaded
    return loaded


@pytest.fixture(scope="session")
def demo_voc_root(tmp_path_factory):
    from segfungi.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("voc") / "data", layout="voc", n_images=18, seed=0, n_val=6)


@pytest.fixture(scope="session")
def fungi_bank(tmp_path_factory, demo_voc_root):
    """A FUNGI bank of 4096 patches; its support/ folder is the embeddings bank."""
    from segfungi.api import build_bank

    settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"})
    return build_bank(settings, tmp_path_factory.mktemp("banks") / "fungi", progress=False)
