"""Benchmark protocols: a table of the benchmark is one registration.

A :class:`BenchmarkProtocol` carries every fact the engine, the tables, the figure, the
dry run and `segfungi compare` need about one protocol, so none of them names a protocol:

* ``plan(settings, dataset)``: the cells it asks for on a dataset (full data: one per
  `benchmark.sizes`; few-shot: one per list of each `benchmark.fractions`);
* ``axis``: what a column is. ``"size"``: a bank size asked for (one bank and one trial
  per column, the banks of one dataset built together in one pass, the column written
  1024×10² in tables). ``"fraction"``: a fraction of the training split (one bank per
  subset list, each list a trial, mean ± sample std over the lists, written 1/128);
* ``dataset_key``: the key of `segfungi.data.DatasetInfo.protocols` whose settings its
  cells run with (its preset in configs/);
* ``title`` (tables), ``compare_title`` (`segfungi compare`), ``panel_title`` and
  ``x_label`` (its figure panel), ``label`` (a cell's words in the dry run), ``trials``
  (lists per column planned when the run does not say), ``summary`` (results.md's line on
  how its cells are summarised);
* ``published(record, column)``: the `segfungi.published.Cell` its published numbers are
  looked up at (None: the protocol has no published numbers).

Its banks live in ``banks/<dataset>/<name>/size-<N>`` (size axis) or
``banks/<dataset>/<name>/<a>-of-<b>/<list>`` (fraction axis), relative to the results folder.

The built-ins ("full", "fewshot") are registered by reference, so `protocol_names()` loads
no torch; the records and folders they write keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

from segfungi.infra.registry import Registry

__all__ = ["AXES", "PROTOCOLS", "BenchmarkProtocol", "benchmark_protocol", "fraction_label", "protocol_names",
           "register_protocol", "unregister_protocol"]

AXES = ("size", "fraction")


@dataclass(frozen=True)
class BenchmarkProtocol:
    """One table of the benchmark per dataset (see the module docstring for the fields)."""

    name: str
    axis: str  # "size" | "fraction"
    plan: Callable  # (settings, dataset) -> list[Cell] (Cell.protocol == name)
    dataset_key: str  # a key of DatasetInfo.protocols
    title: str  # "full training split, by memory-bank size (patches)"
    compare_title: str  # "full training split, mIoU (%) by memory-bank size (patches)"
    panel_title: str  # the figure panel's title
    x_label: str  # the figure panel's x axis
    label: str  # a cell in words: "<dataset> <label> <column>"
    published: Callable | None = None  # (record, column) -> segfungi.published.Cell | None
    trials: int = 1  # trials (lists) planned per column where the run does not say
    summary: str = ""  # results.md's sentence on how its cells are summarised ("" for none)

    def __post_init__(self):
        if self.axis not in AXES:
            raise ValueError(f"benchmark protocol {self.name!r}: axis must be one of {', '.join(AXES)}, "
                             f"got {self.axis!r}")

    @property
    def by_size(self) -> bool:
        """Columns are bank sizes: one bank and one trial each, built together per dataset."""
        return self.axis == "size"

    def folder(self, cell) -> Path:
        """Where a cell's bank lives, relative to the results folder."""
        if self.by_size:
            return Path("banks") / cell.dataset / self.name / f"size-{cell.size}"
        return (Path("banks") / cell.dataset / self.name / cell.fraction_label.replace("/", "-of-")
                / cell.subset_file.stem)

    def cell_words(self, cell) -> str:
        """'full 1,024' / '1/8 list1': a cell in the dry run and the engine's progress."""
        if self.by_size:
            return f"{self.label} {cell.size:,}"
        return f"{cell.fraction_label} {cell.subset_file.stem}"

    def column(self, record: dict):
        """A record's column: the bank size asked for, or its fraction's label ('1/128')."""
        return record["bank_size_requested"] if self.by_size else fraction_label(record["fraction"])

    def column_order(self, column):
        """The sort key of a column (sizes by value, fractions by value)."""
        return int(column) if self.by_size else Fraction(column)


def fraction_label(value) -> str:
    """'1/128' from "1/128", Fraction(1, 128) or 0.0078125."""
    fraction = Fraction(value.strip()) if isinstance(value, str) else Fraction(value).limit_denominator(1 << 20)
    return str(fraction)


PROTOCOLS: Registry[BenchmarkProtocol] = Registry("benchmark protocol")
PROTOCOLS.register_lazy("full", "segfungi.experiments.benchmark._protocol:FULL_DATA")
PROTOCOLS.register_lazy("fewshot", "segfungi.experiments.benchmark._protocol:FEW_SHOT")


def register_protocol(entry: BenchmarkProtocol) -> BenchmarkProtocol:
    """Makes `entry` a table of every benchmark whose settings its `plan` gives cells."""
    if not isinstance(entry, BenchmarkProtocol):
        raise TypeError(f"register_protocol takes a BenchmarkProtocol, got {type(entry).__name__}")
    return PROTOCOLS.register(entry.name, entry)


def unregister_protocol(name: str) -> None:
    """Removes a protocol registered with `register_protocol` (e.g. a test's toy one)."""
    PROTOCOLS.unregister(name)


def protocol_names() -> tuple[str, ...]:
    """The registered protocols, in table order (nothing is imported)."""
    return PROTOCOLS.names()


def benchmark_protocol(name: str) -> BenchmarkProtocol:
    """The protocol registered as `name` (ConfigError naming the registered ones if none)."""
    return PROTOCOLS.get(name)
