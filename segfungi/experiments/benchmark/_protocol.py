"""The cells of the field's tables, and the settings each cell runs with.

Full data (FUNGI Tables 3 and 7): per dataset, one bank per size in `benchmark.sizes`
(1024×10², 10³, 10⁴ patches) built from the whole training split, one augmentation
epoch. Few-shot (FUNGI Table 4): per dataset and fraction in `benchmark.fractions`, one
bank per standard subset list (five per fraction, open-hummingbird-eval's, shipped in
segfungi/data/subsets/), 8 augmentation epochs, up to 2048×10⁴ patches. Each bank is
evaluated for every feature kind in `benchmark.features` (a FUNGI bank's support is the
embeddings bank of the same cell).

A cell's settings are the run's settings with the protocol's own keys, which the dataset's
registration names (`segfungi.data.DatasetInfo.protocols`; the built-ins' are the presets
`configs/protocol_<dataset>.yaml` and `protocol_fewshot_<dataset>.yaml`): the splits, the
augmentation epochs, k and the temperature of the label transfer, the leaves searched
and the reorder count. Everything else (backbone, FUNGI, index memory settings, seeds)
is the run's, the same in every cell. A protocol key the user sets otherwise on purpose
(`benchmark.deviations`, where `segfungi benchmark --set` puts a protocol key) is applied
over the preset, and every cell it touches says "deviates from the protocol: key=value"
and is shown without a published number.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from segfungi.config import dotted_items, load_config
from segfungi.data.registry import dataset_info
from segfungi.experiments.benchmark._protocols import BenchmarkProtocol, benchmark_protocol, protocol_names
from segfungi.infra.errors import ConfigError

__all__ = ["FEW_SHOT", "FULL_DATA", "Cell", "dataset_settings", "deviations", "plan_cells", "planned_columns", "protocol_key_names",
           "protocol_keys", "protocol_values", "subsets_folder"]


@dataclass(frozen=True)
class Cell:
    """One bank of the tables: a dataset, full data at a size or a few-shot list."""

    dataset: str
    protocol: str  # a registered BenchmarkProtocol's name: full | fewshot | ...
    size: int | None = None  # size axis: bank size asked for
    fraction: Fraction | None = None  # fraction axis
    subset_file: Path | None = None  # fraction axis: the list

    @property
    def entry(self) -> BenchmarkProtocol:
        return benchmark_protocol(self.protocol)

    @property
    def label(self) -> str:
        if self.entry.by_size:
            return f"{self.dataset} {self.entry.label} {self.size}"
        return f"{self.dataset} {self.fraction_label} {self.subset_file.stem}"

    @property
    def fraction_label(self) -> str | None:
        return None if self.fraction is None else f"{self.fraction.numerator}/{self.fraction.denominator}"

    @property
    def folder(self) -> Path:
        """Where its bank lives, relative to the results folder."""
        return self.entry.folder(self)


def protocol_keys(dataset: str, protocol: str) -> str | dict:
    """A dataset's keys for the benchmark protocol `protocol` (full | fewshot | a
    registered one), as the dataset's registration gives them under the protocol's
    `dataset_key`: a preset name in configs/, or the keys themselves."""
    key = benchmark_protocol(protocol).dataset_key
    info = dataset_info(dataset)
    if key not in info.protocols:
        kinds = ", ".join(info.protocols) or "none"
        raise ConfigError(f"benchmark.datasets: no {key}-data protocol for {dataset!r} (it has: {kinds}; "
                          "a dataset's protocols are part of its registration, segfungi.data.DatasetInfo)")
    keys = info.protocols[key]
    return keys if isinstance(keys, str) else copy.deepcopy(dict(keys))


def dataset_settings(settings: dict, dataset: str, protocol: str, need_root: bool = True) -> dict:
    """The settings of a dataset's cells: the run's, the protocol's keys over them, and
    the dataset's root from benchmark.roots (`need_root`: refuse a dataset without one)."""
    keys = protocol_keys(dataset, protocol)
    root = settings["benchmark"]["roots"].get(dataset)
    if not root and need_root:
        raise ConfigError(f"benchmark.roots has no root folder for {dataset!r}: pass --root {dataset}=DIR "
                          f"(or set benchmark.roots.{dataset})")
    root_key = {"data": {"root": str(root) if root else None}}
    mine = deviations(settings, dataset, protocol)  # the user's on purpose: over the protocol's keys
    if isinstance(keys, str):
        return load_config(keys, [root_key, *mine], base=settings)
    return load_config(None, [keys, root_key, *mine], base=settings)


def protocol_values(dataset: str, protocol: str) -> dict:
    """{dotted key: value} a dataset's protocol sets (its preset's keys, or the keys its
    registration gives)."""
    keys = protocol_keys(dataset, protocol)
    if isinstance(keys, str):
        import yaml

        from segfungi.config import resolve_config_path

        with open(resolve_config_path(keys), encoding="utf-8") as f:
            keys = yaml.safe_load(f) or {}
    return dict(dotted_items(keys))


def protocol_key_names(datasets) -> set[str]:
    """Every dotted key that some protocol of these datasets sets (a dataset without a
    protocol's keys is left out here: the run reports it)."""
    keys = set()
    for dataset in datasets:
        for protocol in protocol_names():
            try:
                keys |= set(protocol_values(dataset, protocol))
            except ConfigError:
                pass
    return keys


def deviations(settings: dict, dataset: str, protocol: str) -> list[str]:
    """The `key=value` overrides of benchmark.deviations that change a key this dataset's
    protocol sets: applied over the protocol's keys, and named on each cell they touch."""
    keys = protocol_values(dataset, protocol)
    return [f"{key}={_yaml_value(value)}" for key, value in settings["benchmark"]["deviations"].items()
            if key in keys]


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def plan_cells(settings: dict) -> list[Cell]:
    """Every cell the run asks for, dataset by dataset, each registered protocol's in
    registration order: full data at each size, then each few-shot fraction's lists (a
    dataset without lists, e.g. Cityscapes, has none), then any registered protocol's."""
    cells = []
    for dataset in dict.fromkeys(settings["benchmark"]["datasets"]):
        for name in protocol_names():
            cells += benchmark_protocol(name).plan(settings, dataset)
    return cells


def planned_columns(cells: list[Cell]) -> dict:
    """{protocol: {dataset: {column: trials}}} of these cells (run.json's "planned"): a
    column is a bank size or a fraction's label ("1/8"), its trials the cells there."""
    planned: dict = {}
    for cell in cells:
        column = cell.size if cell.entry.by_size else cell.fraction_label
        columns = planned.setdefault(cell.protocol, {}).setdefault(cell.dataset, {})
        columns[column] = columns.get(column, 0) + 1
    return planned


def _full_cells(settings: dict, dataset: str) -> list[Cell]:
    return [Cell(dataset, "full", size=int(size)) for size in dict.fromkeys(settings["benchmark"]["sizes"])]


def _fewshot_cells(settings: dict, dataset: str) -> list[Cell]:
    return [Cell(dataset, "fewshot", fraction=fraction, subset_file=path)
            for fraction in fewshot_fractions(settings) for path in subset_lists(settings, dataset, fraction)]


def _full_published(record: dict, column):
    from segfungi.published import Cell as PublishedCell

    return PublishedCell.full(column, record["aug_epochs"])


def _fewshot_published(record: dict, column):
    from segfungi.experiments.benchmark._records import fewshot_bank_cap
    from segfungi.published import Cell as PublishedCell

    return PublishedCell.fewshot(Fraction(column), fewshot_bank_cap(record), record["aug_epochs"])


# The built-in protocols (registered by reference in _protocols): FUNGI Tables 3/7 and 4.
FULL_DATA = BenchmarkProtocol(
    "full", "size", _full_cells, dataset_key="full",
    title="full training split, by memory-bank size (patches)",
    compare_title="full training split, mIoU (%) by memory-bank size (patches)",
    panel_title="full training split", x_label="memory bank size (patches, log scale)", label="full",
    published=_full_published, trials=1)
FEW_SHOT = BenchmarkProtocol(
    "fewshot", "fraction", _fewshot_cells, dataset_key="fewshot",
    title="few-shot, by fraction of the training split",
    compare_title="few-shot, mIoU (%) by fraction of the training split (mean ± std over lists)",
    panel_title="few-shot", x_label="few-shot fraction of the training split", label="few-shot",
    published=_fewshot_published, trials=5,
    summary="Few-shot cells: mean ± sample std over the trials (fixed lists), with n=trials where a cell has other "
            "than its planned lists (5 per fraction in the protocol).")


def fewshot_fractions(settings: dict) -> list[Fraction]:
    return [Fraction(f).limit_denominator(1 << 20) for f in dict.fromkeys(settings["benchmark"]["fractions"])]


def subset_lists(settings: dict, dataset: str, fraction: Fraction) -> list[Path]:
    """The list files of one fraction: `<folder>/<dataset>/1_div_<N>/*.txt` (the shipped
    standard lists, or benchmark.subsets' folder); none for a dataset without lists."""
    from segfungi.experiments.fewshot import standard_subset_files

    folder = subsets_folder(settings)
    if not (folder / dataset).is_dir():
        return []
    return list(standard_subset_files(dataset, [float(fraction)], folder))


def subsets_folder(settings: dict) -> Path:
    """The folder of few-shot lists benchmark.subsets names: the shipped standard lists,
    the shipped demo lists (ids of `segfungi demo-data --layout voc`), or a folder."""
    from segfungi.experiments.fewshot import demo_subsets_folder, standard_subsets_folder

    subsets = settings["benchmark"]["subsets"]
    if subsets == "standard":
        return standard_subsets_folder()
    if subsets == "demo":
        return demo_subsets_folder()
    if not Path(subsets).expanduser().is_dir():
        raise ConfigError(f"benchmark.subsets: {subsets} is neither 'standard', 'demo' nor an existing folder of "
                          "few-shot lists (<folder>/<dataset>/1_div_<N>/*.txt): fix the path (--subsets DIR)")
    return Path(subsets).expanduser()
