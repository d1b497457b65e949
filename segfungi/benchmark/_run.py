"""Running the benchmark: each expensive pass once, each cell recorded when done, resumable.

Per dataset, in order:

1. the evaluated images are encoded once (`EncodedQueries`): every cell's embeddings
   queries run only the last block on them, its FUNGI queries the last block's forward
   and backward;
2. the full-data banks of every size come from one pass over the augmented training
   views (`segfungi.bank.build_banks`): one encoding serves the support (embeddings) bank
   of every size, and every size's FUNGI pass reads the views' cached last-block inputs;
3. each few-shot list gets its bank (`build_bank`; its own images), evaluated on the
   same encoded images.

Each bank is byte-identical to the one `segfungi build-bank` builds for the same cell,
and each cell's mIoU is the one `segfungi eval` gives (tests/test_benchmark.py).

The results folder keeps the banks, one JSON record per cell and feature kind
(`cells/`), and the tables (`segfungi.benchmark._report`). A rerun reads back finished
cells, resumes a half-built bank and rewrites the tables; a folder holding another
model's or other settings' results is refused, naming what differs, so cells are never
mixed. A killed run loses at most the cell in progress.
"""

from __future__ import annotations

import copy
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

from segfungi import distributed
from segfungi.api import build_bank, build_banks
from segfungi.bank import MemoryBank, describe_differences, differences
from segfungi.benchmark._inputs import check_inputs
from segfungi.benchmark._protocol import Cell, dataset_settings, deviations, plan_cells, planned_columns
from segfungi.benchmark._queries import EncodedQueries
from segfungi.cells import bank_features, cached_results, evaluation_key, features_bank
from segfungi.components import device, eval_spec, make_extractor, open_val_dataset
from segfungi.data.demo import is_demo_root
from segfungi.errors import ConfigError
from segfungi.storage import read_json, write_json_atomic

__all__ = ["RUN_FILE", "run_benchmark"]

RUN_FILE = "benchmark.json"  # what the results folder holds: the model and settings of its cells
CELLS_DIR = "cells"
CACHE_DIR = "cache"  # encoded evaluation images, the views' last-block inputs (removed when done)


def run_benchmark(settings: dict, out: str | Path | None = None, *, backbone=None, progress: bool = True) -> dict:
    """Every cell the settings' `benchmark` section asks for (module docstring); writes the
    results folder `out` (default benchmark.out) and returns {"records": …, "files": …}.
    `backbone`: a model not built from the settings (a `segfungi.CustomBackbone`)."""
    from segfungi.benchmark._report import write_report

    out = Path(out or settings["benchmark"]["out"])
    check_inputs(settings, out, backbone)  # every problem at once, before any work
    cells = plan_cells(settings)
    features = list(dict.fromkeys(settings["benchmark"]["features"]))
    run = _start(settings, out, backbone)
    clock = _Progress(len(cells) * len(features), progress)
    records = []
    for dataset in dict.fromkeys(cell.dataset for cell in cells):
        mine = [cell for cell in cells if cell.dataset == dataset]
        records += _run_dataset(settings, dataset, mine, features, out, backbone, clock, progress)
    run["finished"] = _now()
    files = write_report(out, records, run) if distributed.is_main() else {}
    return {"records": records, "files": files, "run": run}


def _run_dataset(settings, dataset, cells, features, out, backbone, clock, progress) -> list[dict]:
    full = dataset_settings(settings, dataset, "full")  # the evaluated images, the same for every protocol
    val = open_val_dataset(full)
    extractor = make_extractor(full, features="embeddings", backbone=backbone)
    queries = EncodedQueries(out / CACHE_DIR / dataset / "queries", extractor, val, eval_spec(full), progress)
    queries.encode_all()
    records = []
    top = bank_features(features)
    marks = {"generated_data": is_demo_root(full["data"]["root"])}
    keep = settings["benchmark"]["keep_banks"]
    for protocol in dict.fromkeys(cell.protocol for cell in cells):
        sized = [cell for cell in cells if cell.protocol == protocol and cell.entry.by_size]
        if not sized:
            continue
        base = dataset_settings(settings, dataset, protocol)
        cell_settings = {cell: {**base, "bank": {**base["bank"], "size": cell.size}}  # what build-bank gets
                         for cell in sized}
        reused = {cell: _records_without_bank(cell_settings[cell], cell, features, out, keep) for cell in sized}
        folders = {cell.size: out / cell.folder / top for cell in sized if reused[cell] is None}
        if folders:
            build_banks(base, folders, features=top, progress=progress, backbone=backbone,
                        cache_dir=out / CACHE_DIR / dataset / "last_block_input")
        cell_marks = {**marks, "deviations": deviations(settings, dataset, protocol)}
        for cell in sized:
            if reused[cell] is not None:
                records += _reuse(reused[cell], cell, clock)
                continue
            records += _evaluate_cell(cell_settings[cell], cell, folders[cell.size], features, out, val, queries,
                                      backbone, clock, progress, cell_marks)
    for cell in (cell for cell in cells if not cell.entry.by_size):
        trial = _trial_settings(dataset_settings(settings, dataset, cell.protocol), cell)
        reused = _records_without_bank(trial, cell, features, out, keep)
        if reused is not None:
            records += _reuse(reused, cell, clock)
            continue
        bank = build_bank(trial, out / cell.folder / top, resume=True, features=top, progress=progress,
                          warn_capped=False, backbone=backbone)
        cell_marks = {**marks, "deviations": deviations(settings, dataset, cell.protocol)}
        records += _evaluate_cell(trial, cell, bank, features, out, val, queries, backbone, clock, progress,
                                  cell_marks)
    if distributed.is_main():
        queries.remove()  # every cell of the dataset is done
    return records


def _trial_settings(settings: dict, cell: Cell) -> dict:
    """A few-shot list's settings: the list is the subset (the bank seed stays bank.seed)."""
    trial = copy.deepcopy(settings)
    trial["data"].update(subset_file=str(cell.subset_file), subset_fraction=None)
    return trial


def _record_file(out: Path, cell: Cell, kind: str) -> Path:
    return out / CELLS_DIR / cell.folder.relative_to("banks") / f"{kind}.json"


def _records_without_bank(settings, cell, features, out, keep_banks) -> list[dict] | None:
    """With benchmark.keep_banks false, a cell whose bank was removed after its records
    were written: those records, when every feature kind has one made with exactly these
    settings; None otherwise (the cell is built and evaluated as usual)."""
    if keep_banks or (out / cell.folder).exists():
        return None
    records = []
    for kind in features:
        file = _record_file(out, cell, kind)
        record = read_json(file) if file.exists() else None
        if record is None or canonical(record.get("settings")) != canonical(settings):
            return None
        records.append(record)
    return records


def canonical(settings) -> str:
    """Settings as JSON text, so settings read back from a record compare equal to the live ones."""
    return json.dumps(settings, sort_keys=True, default=str)


def _reuse(records: list[dict], cell: Cell, clock) -> list[dict]:
    for record in records:
        clock.done(f"{cell.label} {record['features']}", record["miou"], computed=False)
    return records


def _evaluate_cell(settings, cell, bank_dir, features, out, val, queries, backbone, clock, progress,
                   marks) -> list[dict]:
    """Each feature kind of one cell's bank, read back when its record is there; with
    benchmark.keep_banks false the bank is removed once every kind's record is written."""
    records = []
    top = bank_features(features)
    for kind in features:
        path = features_bank(bank_dir, kind, top)
        bank = MemoryBank(path)
        file = _record_file(out, cell, kind)

        def compute(path=path, bank=bank, kind=kind) -> dict:
            from segfungi.evaluation import evaluate

            results = evaluate(path, settings, progress=progress, backbone=backbone, dataset=val, encoded=queries)
            return {**cell_record(cell, kind, results, bank, settings), **marks}

        record, computed = cached_results(file, evaluation_key(bank.hash, settings), compute,
                                          write=distributed.is_main())
        records.append(record)
        clock.done(f"{cell.label} {kind}", record["miou"], computed)
    if not settings["benchmark"]["keep_banks"] and distributed.is_main():
        shutil.rmtree(out / cell.folder)  # the records and tables stay; see _records_without_bank
    return records


def cell_record(cell: Cell, features: str, results: dict, bank: MemoryBank, settings: dict) -> dict:
    """One row of results.csv / results.json: the cell, its mIoU and what produced it."""
    identity = bank.identity
    return {
        "dataset": cell.dataset,
        "protocol": cell.protocol,
        "features": features,
        "bank_size_requested": cell.size,
        "fraction": cell.fraction_label,
        "trial": None if cell.subset_file is None else cell.subset_file.stem,
        "bank_size": bank.num_patches,
        "patches_per_view": bank.patches_per_image,
        "train_images": identity.dataset.num_images,
        "aug_epochs": identity.sampling.aug_epochs,
        "eval_images": results["images"],
        "miou": results["miou"],
        "pixel_accuracy": results["pixel_accuracy"],
        "per_class_iou": results["per_class_iou"],
        "bank_hash": bank.hash,
        "bank": str(bank.path),
        "backbone": identity.backbone.name,
        "weights": identity.backbone.weights.id,
        "image_size": identity.backbone.img_size,
        "device": device(settings),
        "versions": versions(),
        "timings": {"build_seconds": bank.build_info["build_seconds"],
                    "eval_seconds": results["timings"]["eval_seconds"]},
        "settings": settings,
        "generated_data": False,  # set by the run from the data root's demo marker
        "deviations": [],  # set by the run: the protocol keys set otherwise
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("segfungi", "torch", "timm", "scann"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


# ------------------------------------------------------------------ the folder
def folder_identity(settings: dict, backbone=None) -> dict:
    """What every cell of a results folder shares: the model and the settings that shape a
    cell's numbers, less what the protocol sets per cell and what only says where or how
    fast (roots, output folders, workers, the benchmark's list of cells)."""
    keep = {
        "backbone": backbone.identity() if backbone is not None else settings["backbone"],
        "fungi": settings["fungi"],
        "bank": {k: v for k, v in settings["bank"].items() if k not in ("out", "size", "features", "aug_epochs")},
        "index": {k: v for k, v in settings["index"].items() if k not in ("num_leaves_to_search", "reorder")},
        "eval": {k: settings["eval"][k] for k in ("batch_size", "max_images")},
        "data": {k: settings["data"][k] for k in ("image_size", "on_bad_sample", "mean", "std")},
    }
    if settings["benchmark"]["deviations"]:  # only when set: a folder of protocol cells keeps its identity
        keep["deviations"] = settings["benchmark"]["deviations"]
    return copy.deepcopy(keep)


def _start(settings: dict, out: Path, backbone) -> dict:
    """Refuse a results folder of another model or other settings; record this run's."""
    identity = folder_identity(settings, backbone)
    path = out / RUN_FILE
    if path.exists():
        stored = read_json(path)
        found = differences(stored.get("identity"), identity)
        if found:
            raise ConfigError(f"{out}: holds benchmark results of another model or other settings "
                              f"({describe_differences(found)}); choose another --out, or remove {path} "
                              "and the cells to start again")
    started = _now()
    stored = read_json(path) if path.exists() else {}
    earlier = stored.get("starts", [stored.get("started")])
    run = {
        "model": identity["backbone"].get("name"),
        "weights": make_extractor(settings, features="embeddings", backbone=backbone).backbone.weights_id,
        "device": device(settings),
        "versions": versions(),
        "started": ([s for s in earlier if s] or [started])[0],  # the first run's start
        "starts": [s for s in earlier if s] + [started],  # every run's, resumed ones too
        "generated_data": [d for d in dict.fromkeys(settings["benchmark"]["datasets"])
                           if is_demo_root(settings["benchmark"]["roots"].get(d))],
        "datasets": list(settings["benchmark"]["datasets"]),
        "sizes": list(settings["benchmark"]["sizes"]),
        "fractions": list(settings["benchmark"]["fractions"]),
        "features": list(settings["benchmark"]["features"]),
        "fewshot_lists": fewshot_lists(plan_cells(settings)),
        "planned": planned_columns(plan_cells(settings)),  # every protocol's columns (fields above: older runs')
    }
    if path.exists() and read_json(path).get("weights") not in (None, run["weights"]):
        raise ConfigError(f"{out}: holds benchmark results of other weights ({read_json(path)['weights']}, "
                          f"now {run['weights']}); choose another --out")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"identity": identity, **run})
    return run


def fewshot_lists(cells: list[Cell]) -> dict:
    """{dataset: {fraction: number of lists}}: the few-shot trials the run plans."""
    lists: dict = {}
    for cell in cells:
        if cell.protocol == "fewshot":  # run.json's field: the few-shot protocol's lists
            counts = lists.setdefault(cell.dataset, {})
            counts[cell.fraction_label] = counts.get(cell.fraction_label, 0) + 1
    return lists


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _Progress:
    """'[k/n evaluations] cell kind: mIoU x (elapsed, ETA)' after each evaluation (a cell's
    feature kind on one bank: a few-shot table cell is one per list), or '… reused (record of
    an earlier run)' for one read back; the ETA is the mean time of the evaluations computed
    in this run times those left."""

    def __init__(self, total: int, show: bool):
        self.total, self.show, self.count, self.computed = total, show, 0, 0
        self.started = time.perf_counter()

    def done(self, label: str, miou: float, computed: bool) -> None:
        self.count += 1
        self.computed += computed
        if not self.show or not distributed.is_main():
            return
        head = f"[{self.count}/{self.total} evaluations] {label}: mIoU {100 * miou:.1f}"
        if not computed:
            print(f"{head} reused (record of an earlier run)", file=sys.stderr, flush=True)
            return
        elapsed = time.perf_counter() - self.started
        left = self.total - self.count
        eta = f", ETA {_duration(elapsed / self.computed * left)}" if left and self.computed else ""
        print(f"{head} ({_duration(elapsed)} elapsed{eta})", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
