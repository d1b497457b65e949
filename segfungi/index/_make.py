"""Building an index of the kind the settings name, and loading a saved one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segfungi.index import _files
from segfungi.index._registry import index_kind, saved_index_kind
from segfungi.index._rows import as_array
from segfungi.index._settings import IndexSettings, with_overrides


def make_index(
    features: Any, settings: IndexSettings | dict | None = None, *, device: str | torch.device = "cpu",
    **overrides: Any,
):
    """Builds the index `kind` asks for; `auto` asks the registered kinds (exact below
    `exact_below` rows, device-exact on a GPU that holds the bank, else ScaNN).

    `make_index(features, **config["index"])` works: every config key is a setting.
    `device` (e.g. `backbone.device`) is where an exact or device-exact index keeps the
    bank and runs its matmul + top-k; ScaNN always runs on the CPU.
    """
    if isinstance(settings, dict):
        settings = IndexSettings.from_dict(settings)
    settings = with_overrides(settings or IndexSettings(), overrides)
    features = as_array(features)
    return index_kind(settings.kind_for(features.shape[0], features.shape[1], device)).build(features, settings, device)


def load_index(folder: str | Path):
    """Loads whichever kind of index `folder` holds."""
    kind = _files.read_meta(Path(folder)).get("kind")
    return saved_index_kind(folder, kind).load(folder)
