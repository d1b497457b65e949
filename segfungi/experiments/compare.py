"""`segfungi compare`: several `segfungi benchmark` results folders side by side.

Each folder holds one model's results (its results.json: the run and one record per
evaluated cell, segfungi.experiments.benchmark). The comparison is one table per dataset and
protocol: a row per (folder, model, feature kind), a column per bank size (full
training split) or per few-shot fraction (mean ± sample std over the folder's trials):

    | model                        | weights        | features   | 1024×10² | 1024×10³ |
    | vit_small_patch16_224.dino   | weights dino…  | FUNGI      | 45.1     | 50.2     |
    | vit_small_patch16_dinov3…    | pretrained …   | FUNGI      | 58.3     | 61.0     |

Numbers are only comparable under one protocol. Each record carries the settings it
was evaluated with; the settings that shape a cell's number besides the model
(`PROTOCOL_KEYS`, and the training and evaluated image counts) must agree between
folders, else the comparison is refused naming each differing key and its values per
folder. With ``mark_differences`` the folders go into one table anyway, each protocol
lettered (A, B, …) in a column and explained under the table; never silently mixed.

Published numbers (segfungi.published) can be added as rows (``published=True``): every
entry for the table's dataset and protocol at its columns, labelled with the source,
with the source's settings note under the table.

`write_comparison(out, tables)` writes compare.md, compare.csv, compare.tex and
compare.png (one panel per table: mIoU against bank size or fraction, one line per
row), each written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from segfungi.data.registry import dataset_title
from segfungi.feature_kinds import FEATURE_LABELS
from segfungi.infra.errors import ConfigError
from segfungi.infra.storage import read_json, temporary_name, write_failed, write_text_atomic
from segfungi.infra.weights import describe_id

__all__ = ["PROTOCOL_KEYS", "CompareRow", "CompareTable", "ResultsFolder", "compare", "compare_folders",
           "read_results_folder", "write_comparison"]

# Settings (dotted) that shape a cell's number besides the model: how the bank is sampled,
# how labels are transferred, the FUNGI loss and projection, the evaluated images.
PROTOCOL_KEYS = (
    "data.train_split", "data.val_split", "data.val_subset_file", "data.image_size",
    "bank.aug_epochs", "bank.label_topk", "bank.void_label", "bank.seed",
    "eval.k", "eval.temperature", "eval.max_images",
    "fungi.head_dim", "fungi.temperature", "fungi.proj_dim", "fungi.projection", "fungi.variant",
    "fungi.negatives", "fungi.support_neighbours", "fungi.support_views",
    "index.kind",
)
RECORD_KEYS = ("train_images", "eval_images", "patches_per_view")  # record fields that must agree too
ABSENT = "(absent)"
MISSING = "–"


@dataclass(frozen=True)
class ResultsFolder:
    """One benchmark results folder: its path, a short label, its run and records."""

    path: Path
    label: str
    run: dict
    records: tuple[dict, ...]


@dataclass
class CompareRow:
    """One row: a folder's model and feature kind (or a published source's), its values
    per column as (mean %, std % or None, number of trials) and its protocol letter."""

    model: str
    weights: str
    features: str
    source: str  # the folder's label, or "published: <source, table>"
    values: dict = field(default_factory=dict)
    protocol: str = ""  # "A", "B", … when folders of several protocols share the table
    capped: tuple = ()  # columns whose bank held fewer patches than asked

    @property
    def published(self) -> bool:
        return self.source.startswith("published:")


@dataclass
class CompareTable:
    dataset: str
    protocol: str  # a registered benchmark protocol: full | fewshot | ...
    columns: list
    rows: list[CompareRow]
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{dataset_title(self.dataset)}: {self.entry.compare_title}"

    @property
    def entry(self):
        """The table's BenchmarkProtocol."""
        from segfungi.experiments.benchmark import benchmark_protocol

        return benchmark_protocol(self.protocol)

    def column_label(self, column) -> str:
        from segfungi.published import format_bank_size

        return format_bank_size(column) if self.entry.by_size else str(column)


# ------------------------------------------------------------------ reading
def read_results_folder(path: str | Path) -> ResultsFolder:
    """A benchmark results folder (or its results.json); ConfigError naming the file and
    the fix when it is none."""
    from segfungi.experiments.benchmark import read_records

    path = Path(path)
    results = path / "results.json" if path.is_dir() else path
    if not results.is_file():
        raise ConfigError(f"{path}: no results.json here: give folders that `segfungi benchmark --out` wrote")
    document = read_json(results)
    run = document.get("run") if isinstance(document, dict) else None
    if not isinstance(run, dict):
        raise ConfigError(f"{results}: not a segfungi benchmark results.json (no 'run')")
    records = read_records(results)
    if not records:
        raise ConfigError(f"{results}: holds no evaluated cell yet; run (or resume) the benchmark first")
    folder = results.parent
    return ResultsFolder(folder, folder.name or str(folder), run, tuple(records))


def compare_folders(paths, *, published: bool = False, mark_differences: bool = False) -> list[CompareTable]:
    """`compare` of the folders at `paths` (labels made unique when two folders share a name)."""
    folders = [read_results_folder(p) for p in paths]
    if not folders:
        raise ConfigError("segfungi compare: give at least one benchmark results folder")
    labels = [f.label for f in folders]
    if len(set(labels)) < len(labels):
        folders = [ResultsFolder(f.path, str(f.path), f.run, f.records) for f in folders]
    return compare(folders, published=published, mark_differences=mark_differences)


# ------------------------------------------------------------------ the tables
def compare(folders: list[ResultsFolder], *, published: bool = False,
            mark_differences: bool = False) -> list[CompareTable]:
    """One CompareTable per dataset and protocol found in the folders (module docstring)."""
    positions = dict.fromkeys((r["dataset"], r["protocol"]) for f in folders for r in f.records)
    tables = []
    order = _protocol_order()
    for dataset, protocol in sorted(positions, key=lambda p: (p[0], order.get(p[1], len(order)))):
        mine = [(f, [r for r in f.records if (r["dataset"], r["protocol"]) == (dataset, protocol)]) for f in folders]
        mine = [(f, records) for f, records in mine if records]
        letters, notes = _protocol_letters(dataset, protocol, mine, mark_differences)
        rows = [row for f, records in mine for row in _rows(f, records, protocol, letters[f.label])]
        columns = _columns(protocol, rows)
        table = CompareTable(dataset, protocol, columns, rows, notes)
        if published:
            _add_published(table)
        tables.append(table)
    return tables


def protocol_signature(record: dict) -> dict:
    """The settings of a record that must agree across compared folders."""
    settings = record.get("settings") or {}
    signature = {}
    for dotted in PROTOCOL_KEYS:
        section, key = dotted.split(".")
        value = settings.get(section, {}).get(key, ABSENT) if isinstance(settings.get(section), dict) else ABSENT
        signature[dotted] = value
    for key in RECORD_KEYS:
        signature[key] = record.get(key, ABSENT)
    return signature


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _protocol_letters(dataset, protocol, mine, mark_differences) -> tuple[dict, list[str]]:
    """{folder label: protocol letter or ""} and the notes that explain the letters."""
    signatures = {}
    for folder, records in mine:
        found = {_canonical(protocol_signature(r)): protocol_signature(r) for r in records}
        if len(found) > 1:
            raise ConfigError(f"{folder.path}: its {dataset} {protocol} records were evaluated with different "
                              f"settings ({_differing(list(found.values()))}); it is no single benchmark run")
        signatures[folder.label] = next(iter(found.values()))
    groups = list(dict.fromkeys(_canonical(s) for s in signatures.values()))
    if len(groups) == 1:
        return {label: "" for label in signatures}, []
    differing = _differing(list(signatures.values()))
    per_folder = "; ".join(
        f"{key}: " + ", ".join(f"{_short(signatures[label][key])} in {label}" for label in signatures)
        for key in differing)
    if not mark_differences:
        raise ConfigError(f"segfungi compare: the {dataset} {protocol} results were made with different protocol "
                          f"settings, so their numbers are not comparable ({per_folder}). Compare folders of one "
                          "protocol, or pass --mark-differences to put them in one table with each protocol lettered")
    letters = {label: chr(ord("A") + groups.index(_canonical(s))) for label, s in signatures.items()}
    notes = [f"Protocols differ in {', '.join(differing)}:"]
    for index, group in enumerate(groups):
        letter = chr(ord("A") + index)
        members = [label for label, s in signatures.items() if _canonical(s) == group]
        values = json.loads(group)
        notes.append(f"{letter} ({', '.join(members)}): " + ", ".join(f"{k} = {_short(values[k])}" for k in differing))
    return letters, notes


def _differing(signatures: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for s in signatures for k in s))
    return [k for k in keys if len({_canonical(s.get(k, ABSENT)) for s in signatures}) > 1]


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _protocol_order() -> dict[str, int]:
    """{protocol: its place}: tables in the registration order of the benchmark protocols."""
    from segfungi.experiments.benchmark import protocol_names

    return {name: i for i, name in enumerate(protocol_names())}


def _rows(folder: ResultsFolder, records: list[dict], protocol: str, letter: str) -> list[CompareRow]:
    from segfungi.experiments.benchmark import benchmark_protocol

    by_size = benchmark_protocol(protocol).by_size
    rows: dict[tuple, CompareRow] = {}
    trials: dict[tuple, list[float]] = {}
    for record in records:
        key = (record["backbone"], record["weights"], record["features"])
        row = rows.setdefault(key, CompareRow(record["backbone"], describe_id(record["weights"]),
                                              record["features"], folder.label, protocol=letter))
        column = record["bank_size_requested"] if by_size else _fraction(record["fraction"])
        trials.setdefault((*key, column), []).append(100 * record["miou"])
        if by_size and record["bank_size"] < record["bank_size_requested"]:
            row.capped += (column,)
    for (*key, column), values in trials.items():
        std = statistics.stdev(values) if len(values) > 1 else (None if by_size else 0.0)
        rows[tuple(key)].values[column] = (statistics.fmean(values), std, len(values))
    return list(rows.values())


def _fraction(label) -> Fraction:
    return Fraction(str(label).strip())


def _columns(protocol: str, rows: list[CompareRow]) -> list:
    return sorted({c for row in rows for c in row.values})


def _add_published(table: CompareTable) -> None:
    """Published entries for the table's dataset and protocol, at its columns, as rows."""
    from segfungi.published import published_entries

    found: dict[tuple, CompareRow] = {}
    for entry in published_entries():
        if entry.dataset != table.dataset or entry.cell.protocol != table.protocol:
            continue
        column = entry.cell.bank_size if table.entry.by_size else entry.cell.fraction
        if column not in table.columns:
            continue
        key = (entry.model, entry.features, entry.reference)
        row = found.setdefault(key, CompareRow(entry.label, entry.model, entry.features,
                                               f"published: {entry.reference}"))
        row.values[column] = (float(entry.miou), None, 1)
        note = f"{entry.reference} ({entry.url}): {entry.settings_note}"
        if note not in table.notes:
            table.notes.append(note)
    table.rows.extend(found.values())


# ------------------------------------------------------------------ rendering
def cell_text(table: CompareTable, row: CompareRow, column) -> str:
    value = row.values.get(column)
    if value is None:
        return MISSING
    mean, std, _ = value
    text = f"{mean:.1f}"
    if std is not None and not table.entry.by_size and not row.published:
        text += f" ± {std:.1f}"
    if column in row.capped:
        text += "†"
    return text


def _header(table: CompareTable) -> list[str]:
    marked = any(row.protocol for row in table.rows)
    return (["model", "weights", "features", "from"] + (["protocol"] if marked else [])
            + [table.column_label(c) for c in table.columns])


def _cells(table: CompareTable, row: CompareRow) -> list[str]:
    marked = any(r.protocol for r in table.rows)
    return ([row.model, row.weights, FEATURE_LABELS.get(row.features, row.features), row.source]
            + ([row.protocol or "–"] if marked else []) + [cell_text(table, row, c) for c in table.columns])


def _footnotes(table: CompareTable) -> list[str]:
    notes = list(table.notes)
    if any(row.capped for row in table.rows):
        notes.append("† the training images could not fill the bank: it held fewer patches than the column's size")
    return notes


def render_markdown(tables: list[CompareTable]) -> str:
    lines = ["# In-context segmentation: models side by side", ""]
    for table in tables:
        header = _header(table)
        lines += [f"## {table.title}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_cells(table, row)) + " |" for row in table.rows]
        lines += [""] + [f"- {note}" for note in _footnotes(table)] + ([""] if _footnotes(table) else [])
    return "\n".join(lines).rstrip() + "\n"


def render_csv(tables: list[CompareTable]) -> str:
    """One row per table cell: dataset, protocol, column, row fields, mIoU mean/std (%)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "protocol", "column", "model", "weights", "features", "from", "protocol_mark",
                     "miou_percent", "miou_std_percent", "trials", "bank_capped"])
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                if column not in row.values:
                    continue
                mean, std, count = row.values[column]
                writer.writerow([table.dataset, table.protocol, str(column), row.model, row.weights, row.features,
                                 row.source, row.protocol, f"{mean:.4f}", "" if std is None else f"{std:.4f}", count,
                                 column in row.capped])
    return buffer.getvalue()


def _tex(text: str) -> str:
    out = text.replace("\\", r"\textbackslash{}")
    for plain, escaped in (("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        out = out.replace(plain, escaped)
    for plain, escaped in (("±", r"$\pm$"), ("†", r"$^\dagger$"), ("×", r"$\times$"), ("–", "--"),
                           ("²", "$^2$"), ("³", "$^3$"), ("⁴", "$^4$")):
        out = out.replace(plain, escaped)
    return out


def render_latex(tables: list[CompareTable]) -> str:
    """The tables as LaTeX (booktabs), one tabular per dataset and protocol."""
    parts = ["% segfungi compare: needs \\usepackage{booktabs}"]
    for table in tables:
        header = _header(table)
        parts += [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex(table.title)}}}",
                  r"\begin{tabular}{" + "l" * (len(header) - len(table.columns)) + "r" * len(table.columns) + "}",
                  r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
        parts += [" & ".join(_tex(c) for c in _cells(table, row)) + r" \\" for row in table.rows]
        parts += [r"\bottomrule", r"\end{tabular}"]
        parts += [f"\\par\\footnotesize {_tex(note)}" for note in _footnotes(table)]
        parts += [r"\end{table}", ""]
    return "\n".join(parts)


def comparison_figure(tables: list[CompareTable]):
    """One panel per table: mIoU (%) against bank size (log x) or fraction, one line per
    row (published rows dashed with hollow markers)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.8 * len(tables), 4.2), layout="constrained", squeeze=False)
    # One colour per network and feature kind: a published row shares its measured row's.
    kinds = list(dict.fromkeys(_colour_key(row) for table in tables for row in table.rows))
    colours = {key: f"C{i % 10}" for i, key in enumerate(kinds)}
    handles = {}
    for ax, table in zip(axes[0], tables):
        by_size = table.entry.by_size
        positions = {c: (c if by_size else i) for i, c in enumerate(table.columns)}
        for row in table.rows:
            columns = [c for c in table.columns if c in row.values]
            style = dict(linestyle="--", marker="o", markerfacecolor="none") if row.published else dict(marker="o")
            (line,) = ax.plot([positions[c] for c in columns], [row.values[c][0] for c in columns],
                              color=colours[_colour_key(row)], **style)
            handles.setdefault(_row_key(row), line)
        if by_size:
            ax.set_xscale("log")
        ax.set_xticks([positions[c] for c in table.columns], [table.column_label(c) for c in table.columns])
        ax.minorticks_off()
        ax.set_xlabel(table.entry.x_label)
        ax.set_ylabel("mIoU (%)")
        ax.set_title(f"{dataset_title(table.dataset)}, {table.entry.panel_title}", fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.legend(list(handles.values()), [_row_label(key) for key in handles], loc="outside lower center",
               ncols=min(2, len(handles)), fontsize=7)
    fig.suptitle("in-context segmentation: models side by side")
    return fig


def _colour_key(row: CompareRow) -> tuple:
    return (row.weights if row.published else row.model, row.features)


def _row_key(row: CompareRow) -> tuple:
    return (row.model, row.features, row.source, row.protocol)


def _row_label(key: tuple) -> str:
    model, features, source, letter = key
    label = f"{model}, {FEATURE_LABELS.get(features, features)} ({source})"
    return label + (f" [protocol {letter}]" if letter else "")


def write_comparison(out: str | Path, tables: list[CompareTable]) -> dict[str, Path]:
    """compare.md, .csv, .tex and .png in `out`; returns {file name: path}."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {name: out / name for name in ("compare.md", "compare.csv", "compare.tex", "compare.png")}
    write_text_atomic(written["compare.md"], render_markdown(tables))
    write_text_atomic(written["compare.csv"], render_csv(tables))
    write_text_atomic(written["compare.tex"], render_latex(tables))
    fig = comparison_figure(tables)
    tmp = temporary_name(written["compare.png"])
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, written["compare.png"])
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_failed(written["compare.png"], err) from None
    finally:
        plt.close(fig)
    return written
