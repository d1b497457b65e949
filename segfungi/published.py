"""Published in-context segmentation numbers (mIoU %), to show beside measured ones.

The numbers are data, one YAML file per source in segfungi/data/published/:

    source: {name: FUNGI paper, citation: "...", url: https://arxiv.org/abs/2407.10964}
    blocks:                    # rows of one table that share their settings
      - table: Table 3
        dataset: voc           # voc | ade20k | cityscapes
        train_split: trainaug  # the split the bank was built from
        image_size: 512        # side of the square input, px
        aug_epochs: 1          # augmentation epochs over the training images
        bank_size: 20480000    # few-shot blocks only: the bank size (a cap) of every column
        settings_note: how the source's settings differ from segfungi's defaults
        rows:
          - {model: vit_small_patch16_224.dino, label: DINO ViT-S/16, features: embeddings,
             miou: {102400: 37.2, 1024000: 43.1, 10240000: 46.6}}

`model` is the timm name (with its pretrained tag) of the weights the source used and
`label` the source's name for them. A column is a bank size in patches (full training
split: 1024×10², 10³, 10⁴) or, in a block with `bank_size`, a few-shot fraction of the
training split ("1/128", "1/64", "1/8").

A `Cell` is where a number sits in a protocol: full data at a bank size, or a few-shot
fraction, together with the augmentation epochs (and the few-shot bank cap) it was made
with. `lookup` matches the table position (fraction; bank size for full data);
`published_for` also weighs the weights and the settings of a run and says why a number
is missing or how its settings differ.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import yaml

from segfungi.data.registry import dataset_names
from segfungi.feature_kinds import FEATURE_KINDS
from segfungi.infra.errors import ConfigError
from segfungi.infra.weights import WeightsSource

__all__ = [
    "FEWSHOT_BANK_SIZE", "FEWSHOT_FRACTIONS", "FULL_BANK_SIZES", "PUBLISHED_DIR", "Cell", "Comparison",
    "Published", "Run", "format_bank_size", "format_bank_sizes", "load_published", "lookup", "published_entries",
    "published_for",
]

PUBLISHED_DIR = Path(__file__).resolve().parent / "data" / "published"
FULL_BANK_SIZES = (102400, 1024000, 10240000)  # 1024×10², 10³, 10⁴ patches
FEWSHOT_FRACTIONS = (Fraction(1, 128), Fraction(1, 64), Fraction(1, 8))
FEWSHOT_BANK_SIZE = 20480000  # 2048×10⁴: the few-shot protocol's bank (a cap)
TIMM_NAME = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")  # architecture.pretrained_tag
SOURCE_KEYS = ("name", "citation", "url")
BLOCK_KEYS = ("table", "dataset", "train_split", "image_size", "aug_epochs", "settings_note", "rows")
ROW_KEYS = ("model", "label", "features", "miou")
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def format_bank_size(patches: int) -> str:
    """1024×10² for the protocol's sizes; other sizes with thousands separators."""
    for base in (1024, 2048):
        exponent = 0
        while patches % (base * 10 ** (exponent + 1)) == 0:
            exponent += 1
        if patches == base * 10 ** exponent and exponent > 0:
            return f"{base}×10{str(exponent).translate(SUPERSCRIPTS)}"
    return f"{patches:,}"


def format_bank_sizes(sizes) -> list[str]:
    """Column headers of one table in one notation: the paper's (1024×10², 2048×10⁴) where
    every size has it; else 1024×m for every size (4096 -> 1024×4, 20480 -> 1024×20) where
    each is a whole number of 1024-patch grids; else thousands separators for all."""
    sizes = [int(s) for s in sizes]
    paper = [format_bank_size(s) for s in sizes]
    if all("×" in label for label in paper):
        return paper
    if all(s % 1024 == 0 for s in sizes):
        return [f"1024×{s // 1024:,}" for s in sizes]
    return [f"{s:,}" for s in sizes]


def as_fraction(value: Fraction | float | str) -> Fraction:
    """1/128 from Fraction(1, 128), "1/128" or 0.0078125 (a setting's float)."""
    if isinstance(value, str):
        return Fraction(value.strip())
    return Fraction(value).limit_denominator(1 << 20)


@dataclass(frozen=True)
class Cell:
    """Where a number sits: the bank size (patches) and augmentation epochs, and for the
    few-shot protocol the fraction of the training split (None = the full split)."""

    bank_size: int
    aug_epochs: int
    fraction: Fraction | None = None

    @classmethod
    def full(cls, bank_size: int, aug_epochs: int = 1) -> "Cell":
        return cls(int(bank_size), int(aug_epochs))

    @classmethod
    def fewshot(cls, fraction: Fraction | float | str, bank_size: int = FEWSHOT_BANK_SIZE,
                aug_epochs: int = 8) -> "Cell":
        return cls(int(bank_size), int(aug_epochs), as_fraction(fraction))

    @property
    def protocol(self) -> str:
        return "full" if self.fraction is None else "fewshot"

    def same_position(self, other: "Cell") -> bool:
        """The same table cell: the same fraction, and for full data the same bank size."""
        return self.fraction == other.fraction and (self.fraction is not None or self.bank_size == other.bank_size)

    def position(self) -> str:
        if self.fraction is None:
            return f"bank {format_bank_size(self.bank_size)}"
        return f"{self.fraction} of the training split"


@dataclass(frozen=True)
class Published:
    """One published number and where it comes from."""

    miou: float  # %
    model: str  # timm name of the weights the source used
    label: str  # the source's name for them, e.g. "DINO ViT-S/16"
    dataset: str
    features: str  # embeddings | fungi
    cell: Cell
    image_size: int
    train_split: str
    source: str  # e.g. "FUNGI paper"
    table: str  # e.g. "Table 3"
    url: str
    citation: str
    settings_note: str  # how the source's settings differ from segfungi's defaults

    @property
    def reference(self) -> str:
        return f"{self.source}, {self.table}"


@dataclass(frozen=True)
class Run:
    """What was run: the backbone's timm name and weights id (segfungi.backbones:
    "file:<name>:sha256:…", "timm-hub:…", "random-init:…"), the dataset, the feature
    kind and the cell. `image_size` and `train_split` are compared when given."""

    backbone: str
    weights_id: str
    dataset: str
    features: str
    cell: Cell
    image_size: int | None = None
    train_split: str | None = None


@dataclass(frozen=True)
class Comparison:
    """The published number to show beside a measured one (None when there is none) and
    a short note: why there is none, or what the number is for where the run differs
    ("" when the run matches the source's settings and weights)."""

    entry: Published | None
    note: str


# ------------------------------------------------------------------------- loading
def _fail(path: Path, where: str, problem: str) -> None:
    raise ConfigError(f"{path}: {where}: {problem}")


def _check_keys(path: Path, where: str, mapping, required: tuple, optional: tuple = ()) -> None:
    if not isinstance(mapping, dict):
        _fail(path, where, f"must be a mapping, got {type(mapping).__name__}")
    missing = [k for k in required if k not in mapping]
    unknown = [k for k in mapping if k not in required + optional]
    if missing or unknown:
        _fail(path, where, f"missing {missing}, unknown {unknown} (keys: {', '.join(required + optional)})")


def _text(path: Path, where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(path, where, f"must be non-empty text, got {value!r}")
    return value.strip()


def _positive_int(path: Path, where: str, value) -> int:
    if type(value) is not int or value <= 0:
        _fail(path, where, f"must be a positive integer, got {value!r}")
    return value


def _cell(path: Path, where: str, column, block: dict) -> Cell:
    epochs = block["aug_epochs"]
    if "bank_size" not in block:
        if type(column) is not int or column not in FULL_BANK_SIZES:
            _fail(path, where, f"full-data column must be a bank size of {FULL_BANK_SIZES}, got {column!r}")
        return Cell.full(column, epochs)
    try:
        fraction = as_fraction(str(column))
    except (ValueError, ZeroDivisionError):
        fraction = None
    if fraction not in FEWSHOT_FRACTIONS:
        shown = ", ".join(str(f) for f in FEWSHOT_FRACTIONS)
        _fail(path, where, f"few-shot column must be a fraction of {shown}, got {column!r}")
    return Cell.fewshot(fraction, block["bank_size"], epochs)


def _entries_of_block(path: Path, where: str, block, source: dict) -> list[Published]:
    _check_keys(path, where, block, BLOCK_KEYS, ("bank_size",))
    for key in ("table", "train_split", "settings_note"):
        _text(path, f"{where}.{key}", block[key])
    for key in ("image_size", "aug_epochs") + (("bank_size",) if "bank_size" in block else ()):
        _positive_int(path, f"{where}.{key}", block[key])
    if block["dataset"] not in dataset_names():
        _fail(path, f"{where}.dataset", f"must be one of {', '.join(dataset_names())} (the registered datasets), "
                                       f"got {block['dataset']!r}")
    if not isinstance(block["rows"], list) or not block["rows"]:
        _fail(path, f"{where}.rows", "must be a non-empty list")
    entries = []
    for number, row in enumerate(block["rows"]):
        at = f"{where}.rows[{number}]"
        _check_keys(path, at, row, ROW_KEYS)
        if not isinstance(row["model"], str) or not TIMM_NAME.match(row["model"]):
            _fail(path, f"{at}.model", f"must be a timm name with its pretrained tag, got {row['model']!r}")
        if row["features"] not in FEATURE_KINDS:  # _fail names the file and place
            _fail(path, f"{at}.features", f"must be one of {', '.join(FEATURE_KINDS)}, got {row['features']!r}")
        label = _text(path, f"{at}.label", row["label"])
        if not isinstance(row["miou"], dict) or not row["miou"]:
            _fail(path, f"{at}.miou", "must map columns to mIoU values")
        for column, value in row["miou"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
                _fail(path, f"{at}.miou[{column}]", f"must be an mIoU in % (0, 100], got {value!r}")
            entries.append(Published(
                miou=float(value), model=row["model"], label=label, dataset=block["dataset"],
                features=row["features"], cell=_cell(path, f"{at}.miou[{column}]", column, block),
                image_size=block["image_size"], train_split=block["train_split"].strip(), source=source["name"],
                table=block["table"].strip(), url=source["url"], citation=source["citation"],
                settings_note=" ".join(block["settings_note"].split()),
            ))
    return entries


def load_published(folder: str | Path = PUBLISHED_DIR) -> tuple[Published, ...]:
    """Every entry of every *.yaml in `folder` (files in name order), checked: a
    malformed file raises ConfigError naming the file and the place in it."""
    entries: list[Published] = []
    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read published numbers ({err})") from None
        _check_keys(path, "top level", document, ("source", "blocks"))
        _check_keys(path, "source", document["source"], SOURCE_KEYS)
        source = {key: _text(path, f"source.{key}", document["source"][key]) for key in SOURCE_KEYS}
        if not source["url"].startswith("https://"):
            _fail(path, "source.url", f"must be an https:// address, got {source['url']!r}")
        if not isinstance(document["blocks"], list) or not document["blocks"]:
            _fail(path, "blocks", "must be a non-empty list")
        for number, block in enumerate(document["blocks"]):
            entries.extend(_entries_of_block(path, f"blocks[{number}]", block, source))
    seen = set()
    for entry in entries:
        key = (entry.source, entry.model, entry.dataset, entry.features, entry.cell)
        if key in seen:
            raise ConfigError(f"{folder}: {entry.reference} lists {entry.model} {entry.dataset} {entry.features} "
                              f"at {entry.cell.position()} twice")
        seen.add(key)
    return tuple(entries)


@functools.lru_cache(maxsize=1)
def published_entries() -> tuple[Published, ...]:
    """The numbers segfungi ships (segfungi/data/published/), loaded once."""
    return load_published(PUBLISHED_DIR)


# ------------------------------------------------------------------------- lookups
def lookup(model: str, dataset: str, features: str, cell: Cell,
           entries: tuple[Published, ...] | None = None) -> list[Published]:
    """The published entries for this timm model name, dataset and feature kind at the
    same table position as `cell` (fraction; bank size for full data), every source's."""
    entries = published_entries() if entries is None else entries
    return [e for e in entries if (e.model, e.dataset, e.features) == (model, dataset, features)
            and e.cell.same_position(cell)]


def _differences(entry: Published, run: Run) -> list[tuple[str, str]]:
    """(published, this run) descriptions of the settings in which they differ."""
    def epochs(n: int) -> str:
        return f"{n} augmentation epoch{'' if n == 1 else 's'}"

    def bank(patches: int) -> str:
        return f"bank {format_bank_size(patches)}"

    pairs = [(epochs(entry.cell.aug_epochs), epochs(run.cell.aug_epochs))]
    if entry.cell.fraction is not None:  # a full-data match has the same bank size already
        pairs.append((bank(entry.cell.bank_size), bank(run.cell.bank_size)))
    if run.image_size is not None:
        pairs.append((f"{entry.image_size} px", f"{run.image_size} px"))
    if run.train_split is not None:
        pairs.append((f"train split {entry.train_split}", f"train split {run.train_split}"))
    return [(published, measured) for published, measured in pairs if published != measured]


def _weights_source(weights_id: str) -> WeightsSource | None:
    """The run's weights source, None for a record whose id is none of the forms (shown as it is)."""
    try:
        return WeightsSource.parse(weights_id)
    except ValueError:
        return None


def _weights_note(entry: Published, weights_id: str) -> str:
    source = _weights_source(weights_id)
    if source is not None and source.kind == "timm-hub":
        return ""  # the hub weights of this very timm name
    shown = Path(source.name).name if source is not None and source.kind == "file" else weights_id
    return f"published for {entry.label} weights ({entry.model}); this run's weights: {shown}"


def published_for(run: Run, entries: tuple[Published, ...] | None = None) -> Comparison:
    """The published number to show beside `run`'s measured one, and a note (see
    Comparison). Of several sources, the one whose settings differ least from the run's
    is shown (ties: file order)."""
    entries = published_entries() if entries is None else entries
    of_model = [e for e in entries if e.model == run.backbone]
    if not of_model:
        tagged = sorted({e.model for e in entries if e.model.split(".")[0] == run.backbone})
        if tagged:  # an untagged timm name: which weights it holds is not known
            return Comparison(None, f"no published number for {run.backbone}; published numbers name "
                                    f"{' or '.join(tagged)}: give that backbone name to compare")
        return Comparison(None, f"no published number for this model ({run.backbone})")
    label = of_model[0].label
    source = _weights_source(run.weights_id)
    if source is not None and source.is_random:
        return Comparison(None, "published numbers are for pretrained weights; this run is random-init")
    of_dataset = [e for e in of_model if e.dataset == run.dataset]
    if not of_dataset:
        return Comparison(None, f"no published number for {label} on {run.dataset}")
    of_features = [e for e in of_dataset if e.features == run.features]
    if not of_features:
        return Comparison(None, f"no published {run.features} number for {label} on {run.dataset}")
    matches = [e for e in of_features if e.cell.same_position(run.cell)]
    if not matches:
        published = sorted({e.cell for e in of_features}, key=lambda c: (c.fraction or 0, c.bank_size))
        shown = ", ".join(dict.fromkeys(c.position() for c in published))
        return Comparison(None, f"no published {run.features} number for {label} on {run.dataset} at "
                                f"{run.cell.position()} (published: {shown})")
    best = min(matches, key=lambda e: len(_differences(e, run)))  # min keeps the first of ties
    notes = [_weights_note(best, run.weights_id)]
    differences = _differences(best, run)
    if differences:
        notes.append(f"published for {', '.join(p for p, _ in differences)} "
                     f"(this run: {', '.join(r for _, r in differences)})")
    return Comparison(best, "; ".join(n for n in notes if n))
