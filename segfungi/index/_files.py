"""The saved-index folder: `segfungi_index.json` (written last, so a folder without it is
an interrupted save) and `.npy` files read without unpickling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segfungi.infra.errors import BankError

INDEX_FORMAT_VERSION = 1
META_FILE = "segfungi_index.json"


def meta_header(kind: str, num_vectors: int, dim: int) -> dict:
    """The fields every saved index records first; `read_meta` checks them."""
    return {"format_version": INDEX_FORMAT_VERSION, "kind": kind, "num_vectors": int(num_vectors), "dim": int(dim)}


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def read_meta(folder: Path, kind: str | None = None) -> dict:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise BankError(f"{folder}: not a saved index (no {META_FILE}; interrupted save?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BankError(f"{path}: not valid JSON: {err}") from None
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise BankError(
            f"{path}: index format {meta.get('format_version')!r}, "
            f"this segfungi reads {INDEX_FORMAT_VERSION}; rebuild the index"
        )
    if kind is not None and meta.get("kind") != kind:
        raise BankError(f"{path}: holds a {meta.get('kind')!r} index, expected {kind!r}")
    return meta


def load_npy(path: Path, **kwargs) -> np.ndarray:
    if not path.is_file():
        raise BankError(f"{path}: missing; the saved index is incomplete")
    return np.load(path, allow_pickle=False, **kwargs)
