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

Under torchrun (N ranks, `segfungi.infra.distributed`) the results are those of one process
(tests/test_benchmark_distributed.py), and the work is split this way:

* the encodings of the evaluated images: once per run, each rank encoding every N-th
  of the one-process batches into the shared cache, which every cell then reads;
* the full-data cells: their one pass over the training views is split by shards (each
  rank writes every N-th shard; rank 0 builds the indexes), and each evaluation by image
  batches (each rank scores the batches it encoded; the confusion matrices are summed).
  These cells are few and differ 10× and 100× in size, so no dealing of whole cells
  balances them;
* the few-shot cells: many, independent, of equal cost within a fraction. When there are
  at least N, they are dealt out whole, round-robin in plan order (fraction by fraction,
  list by list: cell i goes to rank i mod N). Each rank builds and evaluates its cells
  as a single process would (`distributed.alone()`: no barrier per shard, no rank waiting
  while another builds an index), on the shared encoded images, and writes their
  records into `cells/`; after a barrier every rank reads the others' records and rank 0
  writes the tables. With fewer few-shot cells than ranks, each is split like a full-data
  cell.

Many nodes: `job_units` are the jobs `segfungi.experiments.benchmark._launch` submits, one per
unit: a dataset's full-data sizes together (one pass over the training views serves
them all) and each few-shot list alone. A job runs `run_benchmark(..., only=[unit],
report=False)` into the shared results folder with its own cache folder; a last step
(a plain run) reads every record back and writes the tables.

The results folder keeps the banks, one JSON record per cell and feature kind
(`cells/`), and the tables (`segfungi.experiments.benchmark._report`). A rerun reads back finished
cells, resumes a half-built bank and rewrites the tables; a folder holding another
model's or other settings' results is refused, naming what differs, so cells are never
mixed. A killed run loses at most the cell in progress.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

from segfungi.api import build_bank, build_banks
from segfungi.bank import MemoryBank, describe_differences, differences
from segfungi.components import device, eval_spec, make_extractor, open_val_dataset
from segfungi.data.demo import is_demo_root
from segfungi.experiments.benchmark._inputs import check_inputs
from segfungi.experiments.benchmark._protocol import Cell, dataset_settings, deviations, plan_cells, planned_columns
from segfungi.experiments.benchmark._queries import EncodedQueries
from segfungi.experiments.cells import bank_features, cached_results, evaluation_key, features_bank
from segfungi.infra import distributed
from segfungi.infra.errors import ConfigError
from segfungi.infra.storage import read_json, write_json_atomic

__all__ = ["RUN_FILE", "job_unit", "job_units", "prepare_run", "run_benchmark", "unfinished_units"]

RUN_FILE = "benchmark.json"  # what the results folder holds: the model and settings of its cells
CELLS_DIR = "cells"
CACHE_DIR = "cache"  # encoded evaluation images, the views' last-block inputs (removed when done)


def run_benchmark(settings: dict, out: str | Path | None = None, *, backbone=None, progress: bool = True,
                  only: list[str] | None = None, report: bool = True) -> dict:
    """Every cell the settings' `benchmark` section asks for (module docstring); writes the
    results folder `out` (default benchmark.out) and returns {"records": …, "files": …}.
    `backbone`: a model not built from the settings (a `segfungi.CustomBackbone`).
    `only`: the job units (`job_units`) to run, the others left alone (a per-cell job);
    `report`: write the tables (a per-cell job does not: the merge step does)."""
    from segfungi.experiments.benchmark._report import write_report

    out = Path(out or settings["benchmark"]["out"])
    check_inputs(settings, out, backbone)  # every problem at once, before any work
    cells = _only(plan_cells(settings), only)
    features = list(dict.fromkeys(settings["benchmark"]["features"]))
    run = _start(settings, out, backbone, record=only is None)
    # A per-cell job keeps its own cache: jobs running at once never write one folder.
    cache = out / CACHE_DIR if only is None else out / CACHE_DIR / "jobs" / _slug("+".join(only))
    clock = _Progress(len(cells) * len(features), progress)
    records = []
    for dataset in dict.fromkeys(cell.dataset for cell in cells):
        mine = [cell for cell in cells if cell.dataset == dataset]
        records += _run_dataset(settings, dataset, mine, features, out, cache, backbone, clock, progress)
    if only is not None and distributed.is_main():
        shutil.rmtree(cache, ignore_errors=True)
    run["finished"] = _now()
    files = write_report(out, records, run) if report and distributed.is_main() else {}
    return {"records": records, "files": files, "run": run}


# ------------------------------------------------------------------ job units
def prepare_run(settings: dict, out: str | Path, backbone=None) -> None:
    """What a run checks and records before any work (inputs, the results folder's
    identity): done once by a launcher before it submits per-cell jobs."""
    check_inputs(settings, Path(out), backbone)
    _start(settings, Path(out), backbone)


def job_unit(cell: Cell) -> str:
    """The job a cell runs in, one job per unit: a dataset's sizes of one protocol together
    (full data: they share one pass over the training views), each few-shot list alone."""
    return f"{cell.dataset} {cell.protocol}" if cell.entry.by_size else cell.label


def job_units(settings: dict) -> list[str]:
    """The run's job units, in plan order."""
    return list(dict.fromkeys(job_unit(cell) for cell in plan_cells(settings)))


def unfinished_units(settings: dict, out: str | Path) -> list[str]:
    """The job units with a cell lacking a record of some feature kind in `out` (a job that
    died, or never ran). A record that is there but stale is redone by the merge step."""
    out = Path(out)
    features = list(dict.fromkeys(settings["benchmark"]["features"]))
    return list(dict.fromkeys(job_unit(cell) for cell in plan_cells(settings)
                              if not all(_record_file(out, cell, kind).is_file() for kind in features)))


def _only(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    if only is None:
        return cells
    units = list(dict.fromkeys(job_unit(cell) for cell in cells))
    unknown = [unit for unit in only if unit not in units]
    if unknown:
        raise ConfigError(f"benchmark job units {unknown} are not cells of this run (its units: {', '.join(units)})")
    return [cell for cell in cells if job_unit(cell) in only]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ------------------------------------------------------------------ a dataset
def _run_dataset(settings, dataset, cells, features, out, cache, backbone, clock, progress) -> list[dict]:
    full = dataset_settings(settings, dataset, "full")  # the evaluated images, the same for every protocol
    val = open_val_dataset(full)
    extractor = make_extractor(full, features="embeddings", backbone=backbone)
    folder = cache / dataset / "queries"
    # Encoded when the first evaluation needs them (a rerun of finished cells encodes nothing).
    queries = EncodedQueries(folder, extractor, val, eval_spec(full), progress)
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
            with memory_guard(base, out, f"{dataset} {protocol}: building the banks of sizes {sorted(folders)}"):
                build_banks(base, folders, features=top, progress=progress, backbone=backbone,
                            cache_dir=cache / dataset / "last_block_input")
        cell_marks = {**marks, "deviations": deviations(settings, dataset, protocol)}
        for cell in sized:
            if reused[cell] is not None:
                records += _reuse(reused[cell], cell, clock)
                continue
            records += _evaluate_cell(cell_settings[cell], cell, folders[cell.size], features, out, val, queries,
                                      backbone, clock, progress, cell_marks, owner=distributed.is_main())
    fewshot = [cell for cell in cells if not cell.entry.by_size]  # one bank per list
    if fewshot:
        job = _FewshotJob(settings, dataset, features, out, val, backbone, clock, progress, marks)
        world = distributed.world_size()
        if world > 1 and len(fewshot) >= world:
            records += _dealt_fewshot(job, fewshot, queries)
        else:
            records += [r for cell in fewshot for r in job.run(cell, queries, owner=distributed.is_main())]
    distributed.barrier()  # every rank is done with the encoded images
    if distributed.is_main():
        shutil.rmtree(folder, ignore_errors=True)  # every cell of the dataset is done
    return records


class _FewshotJob:
    """What every few-shot cell of a dataset shares; `run(cell, …)` builds and evaluates one."""

    def __init__(self, settings, dataset, features, out, val, backbone, clock, progress, marks):
        self.settings, self.dataset = settings, dataset
        self.features, self.out, self.val, self.backbone = features, out, val, backbone
        self.clock, self.progress = clock, progress
        self.keep = settings["benchmark"]["keep_banks"]
        self.marks = marks

    def run(self, cell: Cell, queries, owner: bool) -> list[dict]:
        trial = _trial_settings(dataset_settings(self.settings, self.dataset, cell.protocol), cell)
        reused = _records_without_bank(trial, cell, self.features, self.out, self.keep)
        if reused is not None:
            return _reuse(reused, cell, self.clock)
        top = bank_features(self.features)
        with memory_guard(trial, self.out, f"{cell.label}: building its bank"):
            bank = build_bank(trial, self.out / cell.folder / top, resume=True, features=top,
                              progress=self.progress, warn_capped=False, backbone=self.backbone)
        marks = {**self.marks, "deviations": deviations(self.settings, self.dataset, cell.protocol)}
        return _evaluate_cell(trial, cell, bank, self.features, self.out, self.val, queries, self.backbone,
                              self.clock, self.progress, marks, owner=owner)


def _dealt_fewshot(job: _FewshotJob, cells: list[Cell], queries: EncodedQueries) -> list[dict]:
    """The few-shot cells dealt out whole over the ranks (module docstring): each rank
    builds and evaluates its cells as a single process would, on the shared encoded
    images (each rank encodes its every world-th batch first); then every rank reads the
    others' records from their files."""
    rank, world = distributed.rank(), distributed.world_size()
    job.progress = job.progress and rank == 0  # bars of rank 0's cells only
    queries.encode_all()  # this rank's share; a share the full-data cells encoded is read back
    distributed.barrier()  # every batch is stored
    mine = {cell: None for cell in cells[rank::world]}
    with distributed.alone():
        for cell in mine:
            mine[cell] = job.run(cell, queries, owner=True)
    distributed.barrier()  # every rank's records are written
    records = []
    for number, cell in enumerate(cells):
        if cell in mine:
            records += mine[cell]
            continue
        for kind in job.features:
            record = read_json(_record_file(job.out, cell, kind))
            records.append(record)
            job.clock.done(f"{cell.label} {kind}", record["miou"], computed=True, by=number % world)
    return records


@contextlib.contextmanager
def memory_guard(settings: dict, out: Path, what: str):
    """Out of device (or host) memory inside: a ConfigError naming the cell, the stage and
    the settings that need less memory, saying that the finished cells are kept (their
    records and banks are written atomically) and that the same command resumes. (A
    device-exact search has already retried with smaller blocks, segfungi.index; a batch
    of the FUNGI pass or of the evaluation in halves, segfungi.infra.memory.)"""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ConfigError(
            f"{what}: out of memory on {device(settings)} ({str(err).splitlines()[0] if str(err) else 'no detail'}). "
            f"Every cell finished so far is kept in {out}/cells and the banks built so far in {out}/banks; the same "
            "command resumes. Needing less memory: the evaluation's eval.batch_size (now "
            f"{settings['eval']['batch_size']}); the banks' bank.batch_size (now {settings['bank']['batch_size']}); "
            "the search's "
            "index.device_shards (split the bank over more GPUs) or index.kind=scann (search on the CPU)") from err


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
                   marks, owner: bool) -> list[dict]:
    """Each feature kind of one cell's bank, read back when its record is there; with
    benchmark.keep_banks false the bank is removed once every kind's record is written.
    `owner`: this process writes the records (rank 0, or the rank a cell is dealt to)."""
    records = []
    top = bank_features(features)
    for kind in features:
        path = features_bank(bank_dir, kind, top)
        bank = MemoryBank(path)
        file = _record_file(out, cell, kind)

        def compute(path=path, bank=bank, kind=kind) -> dict:
            from segfungi.inference.evaluation import evaluate

            with memory_guard(settings, out, f"{cell.label}: evaluating its {kind} bank"):
                queries.encode_all()
                results = evaluate(path, settings, progress=progress, backbone=backbone, dataset=val,
                                   encoded=queries)
            return {**cell_record(cell, kind, results, bank, settings), **marks}

        record, computed = cached_results(file, evaluation_key(bank.hash, settings), compute, write=owner)
        records.append(record)
        clock.done(f"{cell.label} {kind}", record["miou"], computed)
    if not settings["benchmark"]["keep_banks"] and owner:
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


def _start(settings: dict, out: Path, backbone, record: bool = True) -> dict:
    """Refuse a results folder of another model or other settings; record this run's
    (`record`: False for a per-cell job, whose launcher recorded the run)."""
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
    if distributed.is_main() and (record or not path.exists()):
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

    def done(self, label: str, miou: float, computed: bool, by: int | None = None) -> None:
        """`by`: the rank that computed it, when another rank did (cells dealt out)."""
        self.count += 1
        self.computed += computed
        if not self.show or distributed.group_rank() != 0:
            return
        head = f"[{self.count}/{self.total} evaluations] {label}: mIoU {100 * miou:.1f}"
        if by is not None:
            head += f" (rank {by})"
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
