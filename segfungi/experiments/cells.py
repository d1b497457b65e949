"""One cell of a results table: a bank built (or reused), evaluated for each feature kind.

A FUNGI bank carries its support index, which is exactly the embeddings bank of the
same images, sampling and size (segfungi.bank), so one build serves both feature kinds:
the FUNGI bank is evaluated as it is, its `support/` as the embeddings bank. The bank
sweep and the few-shot trials run their cells through `run_cell`.

With `results_dir`, each evaluation's results are kept in `results-<features>.json`
there, keyed by the bank's hash and the evaluation settings, so a rerun (or a killed
run) reads back what is done instead of evaluating again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from segfungi.api import build_bank
from segfungi.bank import MANIFEST, SUPPORT_DIR, MemoryBank
from segfungi.components import evaluation_settings
from segfungi.inference.evaluation import evaluate
from segfungi.infra.storage import read_json, settings_hash, write_json_atomic

__all__ = ["CellResult", "bank_features", "cached_results", "evaluate_once", "evaluation_key", "features_bank", "run_cell"]


@dataclass
class CellResult:
    features: str  # embeddings | fungi
    results: dict  # what segfungi.evaluate returns
    bank: MemoryBank


def bank_features(features: Sequence[str]) -> str:
    """The features of the bank that serves every kind in `features`: a FUNGI bank when
    they list fungi (its support is the embeddings bank), else an embeddings bank."""
    return "fungi" if "fungi" in features else "embeddings"


def features_bank(bank_dir: str | Path, features: str, built: str) -> Path:
    """The folder of `features`' bank inside a bank of `built` features (its support/)."""
    return Path(bank_dir) if features == built else Path(bank_dir) / SUPPORT_DIR


def evaluation_key(bank_hash: str, settings: dict) -> str:
    """What an evaluation's results depend on: the bank and the evaluation settings."""
    return settings_hash({"bank": bank_hash, **evaluation_settings(settings)})


def run_cell(settings: dict, folder: str | Path, features: Sequence[str], progress: bool = True,
             warn_capped: bool = True, results_dir: str | Path | None = None) -> list[CellResult]:
    """Build (or reuse) the bank the settings describe in `folder` (a FUNGI bank when
    `features` lists fungi) and evaluate it once per feature kind in `features`."""
    folder = Path(folder)
    top = bank_features(features)
    existed = (folder / MANIFEST).exists()
    bank_dir = build_bank(settings, folder, resume=True, features=top, progress=progress, warn_capped=warn_capped)
    if existed:  # build_bank checked it is the same bank
        print(f"segfungi: reusing the {top} bank in {folder}, built before with these settings",
              file=sys.stderr, flush=True)
    cells = []
    for kind in features:
        path = features_bank(bank_dir, kind, top)
        cache = Path(results_dir) / f"results-{kind}.json" if results_dir is not None else None
        cells.append(CellResult(kind, evaluate_once(settings, path, cache, progress), MemoryBank(path)))
    return cells


def evaluate_once(settings: dict, bank_path: Path, cache: Path | None, progress: bool = True) -> dict:
    """`evaluate`, unless `cache` holds the results of this very bank and evaluation."""
    if cache is None:
        return evaluate(bank_path, settings, progress=progress)
    key = evaluation_key(MemoryBank(bank_path).hash, settings)
    return cached_results(cache, key, lambda: evaluate(bank_path, settings, progress=progress))[0]


def cached_results(file: Path, key: str, compute: Callable[[], dict], write: bool = True) -> tuple[dict, bool]:
    """The one results cache: the record in `file` when it was computed for `key` (an
    `evaluation_key`), else `compute()` with its key, written to `file` atomically (`write`:
    False on the ranks of a distributed run that do not own the file). Returns (record,
    whether it was computed now)."""
    record = read_json(file) if file.exists() else None
    if record is not None and record.get("cache_key") == key:
        return record, False
    record = {**compute(), "cache_key": key}
    if write:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(file, record)
    return record, True
