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
from segfungi.infra.errors import ConfigError

__all__ = ["Cell", "dataset_settings", "deviations", "plan_cells", "protocol_keys", "protocol_values",
           "subsets_folder"]

FULL, FEWSHOT = "full", "fewshot"


@dataclass(frozen=True)
class Cell:
    """One bank of the tables: a dataset, full data at a size or a few-shot list."""

    dataset: str
    protocol: str  # full | fewshot
    size: int | None = None  # full: bank size asked for
    fraction: Fraction | None = None  # few-shot
    subset_file: Path | None = None  # few-shot: the list

    @property
    def label(self) -> str:
        if self.protocol == FULL:
            return f"{self.dataset} full {self.size}"
        return f"{self.dataset} {self.fraction_label} {self.subset_file.stem}"

    @property
    def fraction_label(self) -> str | None:
        return None if self.fraction is None else f"{self.fraction.numerator}/{self.fraction.denominator}"

    @property
    def folder(self) -> Path:
        """Where its bank lives, relative to the results folder."""
        if self.protocol == FULL:
            return Path("banks") / self.dataset / FULL / f"size-{self.size}"
        return Path("banks") / self.dataset / FEWSHOT / self.fraction_label.replace("/", "-of-") / self.subset_file.stem


def protocol_keys(dataset: str, protocol: str) -> str | dict:
    """A dataset's protocol keys for `protocol` (full | fewshot), as its registration gives
    them: a preset name in configs/, or the keys themselves."""
    info = dataset_info(dataset)
    if protocol not in info.protocols:
        kinds = ", ".join(info.protocols) or "none"
        raise ConfigError(f"benchmark.datasets: no {protocol}-data protocol for {dataset!r} (it has: {kinds}; "
                          "a dataset's protocols are part of its registration, segfungi.data.DatasetInfo)")
    keys = info.protocols[protocol]
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
    """Every cell the run asks for, dataset by dataset: full data at each size, then
    each few-shot fraction's lists (a dataset without lists, e.g. Cityscapes, has none)."""
    bench = settings["benchmark"]
    cells = []
    for dataset in dict.fromkeys(bench["datasets"]):
        cells += [Cell(dataset, FULL, size=int(size)) for size in dict.fromkeys(bench["sizes"])]
        for fraction in fewshot_fractions(settings):
            cells += [Cell(dataset, FEWSHOT, fraction=fraction, subset_file=path)
                      for path in subset_lists(settings, dataset, fraction)]
    return cells


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
