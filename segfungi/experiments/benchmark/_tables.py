"""The benchmark's records laid out like the field's tables, with the published numbers.

A table is one dataset under one protocol: rows are the feature kinds, columns the bank
sizes asked for (full training split: FUNGI paper Tables 3 and 7) or the few-shot
fractions (Table 4). A cell holds the records of its position: one for full data, one
per trial (fixed list) for few-shot, summarised as

    mean = (1/n) Σ_i m_i,    std = sqrt(Σ_i (m_i − mean)² / (n − 1))    (0 for n = 1),

the sample std of segfungi.experiments.fewshot.summarise. Its published number is
segfungi.published.published_for's for the model, weights, dataset, feature kind and
cell (bank size asked for and augmentation epochs; few-shot: the fraction and the bank
cap), with the run's image size and training split.

The cells a run planned are its datasets × feature kinds × (sizes + fractions with
lists); a full-data cell is done with its record, a few-shot cell with all its lists'
trials (its protocol's `trials`, unless run["fewshot_lists"] says otherwise).
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field

from segfungi.data.registry import dataset_title as registered_title
from segfungi.experiments.benchmark._protocols import BenchmarkProtocol, benchmark_protocol, protocol_names
from segfungi.experiments.benchmark._records import checked_records, fraction_label
from segfungi.feature_kinds import FEATURE_KINDS, FEATURE_LABELS
from segfungi.published import Comparison, Published, Run, format_bank_size, format_bank_sizes, published_for

__all__ = ["DEVIATES", "GENERATED_NOTE",
           "Footnote", "Measured", "Notes", "Table", "build_tables", "dataset_title", "evaluations",
           "progress"]



@dataclass(frozen=True)
class Measured:
    """The records of one table cell (trials in the order given) and its published number."""

    records: tuple[dict, ...]
    comparison: Comparison

    @property
    def mious_percent(self) -> list[float]:
        return [100 * r["miou"] for r in self.records]

    @property
    def mean_percent(self) -> float:
        return statistics.fmean(self.mious_percent)

    @property
    def std_percent(self) -> float:
        """Sample std (n − 1) over the trials; 0 for one trial."""
        return statistics.stdev(self.mious_percent) if len(self.records) > 1 else 0.0

    @property
    def trials(self) -> int:
        return len(self.records)



@dataclass(frozen=True)
class Table:
    """One dataset under one protocol; `cells` maps (feature kind, column) to what was
    measured there (absent: not run yet). Columns are bank sizes asked for (full) or
    fraction labels ("1/128", few-shot), in increasing order."""

    dataset: str
    protocol: str
    features: tuple[str, ...]
    columns: tuple
    cells: dict = field(default_factory=dict)
    trials_planned: dict = field(default_factory=dict)  # column -> trials (lists) planned: 1 for full data
    generated: bool = False  # the dataset's root holds segfungi's generated demo data

    @property
    def dataset_title(self) -> str:
        return dataset_title(self.dataset, self.generated)

    @property
    def entry(self) -> BenchmarkProtocol:
        return benchmark_protocol(self.protocol)

    @property
    def title(self) -> str:
        return f"{self.dataset_title}: {self.entry.title}"

    @property
    def records(self) -> list[dict]:
        return [r for kind in self.features for c in self.columns if (kind, c) in self.cells
                for r in self.cells[(kind, c)].records]

    def done(self, kind: str, column) -> bool:
        cell = self.cells.get((kind, column))
        return cell is not None and cell.trials >= self.trials_planned[column]

    def capped(self, column) -> list[int]:
        """The sizes a full-data column's banks hold where its training images cannot fill
        the size asked for (fewer patches than views × patches per view give); [] where
        they can. Holding up to one patch per view less than asked, from giving every
        view the same whole number of patches, is not a cap."""
        if not self.entry.by_size:
            return []
        held = set()
        for kind in self.features:
            cell = self.cells.get((kind, column))
            for r in cell.records if cell else ():
                if r["patches_per_view"] < column // (r["train_images"] * r["aug_epochs"]):
                    held.add(r["bank_size"])
        return sorted(held)

    def column_label(self, column) -> str:
        """1024×10² (full) or 1/128 (few-shot); a bank the training images could not fill
        to the size asked for says what it holds: '1024×10⁴ (holds 1,499,136)'."""
        if not self.entry.by_size:
            return str(column)
        held = self.capped(column)
        label = format_bank_sizes(self.columns)[self.columns.index(column)]  # one notation per table
        if held:
            label += f" (holds {' / '.join(format_bank_size(h) for h in held)})"
        return label

    def underfilled(self) -> bool:
        """Whether a full-data column is capped by its training images (see `capped`)."""
        return any(self.capped(column) for column in self.columns)

    @functools.cached_property
    def notes(self) -> "Notes":
        """The footnotes of the published numbers shown and why the others are missing."""
        marks, footnotes, missing = {}, {}, {}
        for (kind, column), cell in self.cells.items():
            entry, note = cell.comparison.entry, cell.comparison.note
            if entry is None:
                missing.setdefault(note, []).append(f"{FEATURE_LABELS[kind]} {self.column_label(column)}")
                continue
            key = (entry.reference, entry.citation, entry.url, entry.settings_note, note)
            footnotes.setdefault(key, Footnote(len(footnotes) + 1, entry, note))
            marks[(kind, column)] = footnotes[key]
        everywhere = [note for note, cells in missing.items() if len(cells) == len(self.cells)]
        return Notes(marks, list(footnotes.values()),
                     [(note, [] if note in everywhere else cells) for note, cells in missing.items()])


@dataclass(frozen=True)
class Footnote:
    """A published number's source; `differs` says how the run's settings differ from
    the source's ("" where they match)."""

    number: int
    entry: Published
    differs: str


@dataclass(frozen=True)
class Notes:
    marks: dict  # (feature kind, column) -> the Footnote of its published number
    footnotes: list  # Footnote, numbered from 1
    missing: list  # (why no published number, the cells it is missing from: [] = all measured cells)


def _planned_columns(run: dict | None, dataset: str, protocol: str) -> dict:
    """{column: trials planned} of what `run` asked for on `dataset` under `protocol`:
    run["planned"] (every protocol's, from the engine's plan) where given. A run.json
    written before it: each bank size (full data, one trial), each fraction (few-shot),
    no column of another protocol (its records' columns show). Few-shot: run["fewshot_lists"]
    ({dataset: {fraction: number of lists}}, from the engine's plan) where given, so a
    dataset without lists (Cityscapes) plans none; else every fraction of run["fractions"]
    on every dataset, with the protocol's `trials` lists."""
    if run is None:
        return {}
    if "planned" in run:  # every protocol's columns, as the engine planned them
        entry = benchmark_protocol(protocol)
        columns = run["planned"].get(protocol, {}).get(dataset, {})
        return {(int(c) if entry.by_size else fraction_label(c)): int(n) for c, n in columns.items()}
    if protocol == "full":  # run.json's fields of the built-in protocols
        return {int(size): 1 for size in run["sizes"]}
    if protocol != "fewshot":  # another registered protocol: the columns of its records
        return {}
    if "fewshot_lists" in run:
        return {fraction_label(f): int(n) for f, n in run["fewshot_lists"].get(dataset, {}).items()}
    return {fraction_label(f): benchmark_protocol(protocol).trials for f in run["fractions"]}


GENERATED_NOTE = "generated demo data: published numbers are for the real dataset"
DEVIATES = "deviates from the protocol"


def dataset_title(dataset: str, generated: bool = False) -> str:
    """'Pascal VOC 2012'; for segfungi's generated demo data never the real dataset's name."""
    if generated:
        return f"generated demo data ({dataset} layout)"
    return registered_title(dataset)


def _comparison(records: list[dict], column) -> Comparison:
    """The cell's published number, withheld on generated data and for a cell that
    deviates from the protocol (its number would not measure the same thing)."""
    first = records[0]
    deviations = list(dict.fromkeys(d for r in records for d in r["deviations"]))
    withheld = [GENERATED_NOTE] if any(r["generated_data"] for r in records) else []
    withheld += [f"{DEVIATES}: {', '.join(deviations)}"] if deviations else []
    if withheld:
        return Comparison(None, "; ".join(withheld))
    entry = benchmark_protocol(first["protocol"])
    cell = entry.published(first, column) if entry.published else None
    if cell is None:
        return Comparison(None, f"no published numbers for the {entry.name} protocol")
    return published_for(Run(first["backbone"], first["weights"], first["dataset"], first["features"], cell,
                             first["image_size"], first["settings"]["data"]["train_split"]))


def _column(record: dict):
    return benchmark_protocol(record["protocol"]).column(record)


def build_tables(records: list[dict], run: dict | None = None) -> list[Table]:
    """The tables of these records (checked with checked_records) and of the cells `run`
    planned (None: only the records' cells), in the run's dataset order, full data first."""
    records = checked_records(records)
    datasets = list(dict.fromkeys([*(run["datasets"] if run else []), *(r["dataset"] for r in records)]))
    kinds_asked = [*(run["features"] if run else []), *(r["features"] for r in records)]
    kinds = tuple(k for k in FEATURE_KINDS if k in kinds_asked)
    tables = []
    for dataset in datasets:
        for protocol in protocol_names():
            entry = benchmark_protocol(protocol)
            mine = [r for r in records if (r["dataset"], r["protocol"]) == (dataset, protocol)]
            planned = _planned_columns(run, dataset, protocol)
            for record in mine:  # a cell the run did not plan (e.g. no run given) still shows
                planned.setdefault(_column(record), entry.trials)
            columns = tuple(sorted(planned, key=entry.column_order))
            if not columns:
                continue
            cells = {}
            for kind in kinds:
                for column in columns:
                    trials = [r for r in mine if r["features"] == kind and _column(r) == column]
                    if trials:
                        cells[(kind, column)] = Measured(tuple(trials), _comparison(trials, column))
            generated = dataset in (run or {}).get("generated_data", ()) or \
                any(r["generated_data"] for r in records if r["dataset"] == dataset)
            tables.append(Table(dataset, protocol, kinds, columns, cells, planned, generated))
    return tables


def progress(tables: list[Table]) -> tuple[int, int, list[str]]:
    """(cells done, cells planned, the cells not done in words: 'voc FUNGI 1024×10⁴',
    'ade20k embeddings 1/8 (3 of 5 trials)')."""
    done, planned, missing = 0, 0, []
    for table in tables:
        for kind in table.features:
            for column in table.columns:
                planned += 1
                if table.done(kind, column):
                    done += 1
                    continue
                said = f"{table.dataset} {FEATURE_LABELS[kind]} {table.column_label(column)}"
                cell = table.cells.get((kind, column))
                if cell is not None:
                    said += f" ({cell.trials} of {table.trials_planned[column]} trials)"
                missing.append(said)
    return done, planned, missing


def evaluations(tables: list[Table]) -> tuple[int, int]:
    """(evaluations done, planned): one per feature kind and bank, so a few-shot table
    cell of 5 lists counts 5; the benchmark's console counts these ('[8/8 evaluations]')."""
    done = planned = 0
    for table in tables:
        for kind in table.features:
            for column in table.columns:
                planned += table.trials_planned[column]
                cell = table.cells.get((kind, column))
                done += min(cell.trials, table.trials_planned[column]) if cell else 0
    return done, planned
