"""The files a researcher reads after `segfungi benchmark`: one model's row of the
field's in-context segmentation tables, beside the published numbers.

`write_report(out, records, run)` writes into `out`:

    results.md    the tables (FUNGI paper Tables 3 / 7 and 4 laid out), under a header
                  saying what was run and how many of the planned cells are done
    results.csv   one row per cell and trial: every record field (fractions 0..1 named
    results.json  *_fraction, nested fields as JSON in the CSV) and the cell's published
                  number (%), source and note
    results.tex   the tables as LaTeX (booktabs)
    <dataset>.png mIoU against bank size and against the few-shot fraction

Every file is written to a temporary name and renamed into place, so a reader (or a
report rewritten after each cell) never sees half a file. `records` are the engine's
per-cell records (segfungi.experiments.benchmark._records.RECORD_FIELDS); `run` says what was asked
for (RUN_FIELDS, and optionally `fewshot_lists`: {dataset: {fraction: number of lists}},
the few-shot cells planned; without it every dataset plans 5 lists of every fraction).
"""

from __future__ import annotations

import os
from pathlib import Path

from segfungi.experiments.benchmark._latex import render_latex
from segfungi.experiments.benchmark._markdown import render_markdown, summary_text, weights_words
from segfungi.experiments.benchmark._records import (
    PUBLISHED_COLUMNS,
    checked_records,
    record_from_row,
    row_of_record,
    rows_from_csv,
    rows_to_csv,
)
from segfungi.experiments.benchmark._tables import Table, build_tables, progress
from segfungi.feature_kinds import FEATURE_KINDS, FEATURE_LABELS
from segfungi.infra.errors import ConfigError
from segfungi.infra.storage import read_json, temporary_name, write_failed, write_json_atomic, write_text_atomic
from segfungi.published import Comparison

__all__ = ["RUN_FIELDS", "read_records", "summary_table", "write_report"]

RUN_FIELDS = ("model", "weights", "device", "versions", "started", "finished", "datasets", "sizes", "fractions",
              "features")


def _check_run(run) -> None:
    missing = [k for k in RUN_FIELDS if not isinstance(run, dict) or k not in run]
    if missing:
        raise ConfigError(f"benchmark run description: missing {', '.join(missing)} (expected {', '.join(RUN_FIELDS)})")
    unknown = [k for k in run["features"] if k not in FEATURE_KINDS]
    if unknown:
        raise ConfigError(f"benchmark run description: features {unknown} (known: {', '.join(FEATURE_KINDS)})")
    if not isinstance(run["fractions"], (list, tuple)) or not isinstance(run["sizes"], (list, tuple)):
        raise ConfigError("benchmark run description: sizes is a list of bank sizes and fractions a list, "
                          f"got {run['sizes']!r} and {run['fractions']!r}")
    lists = run.get("fewshot_lists", {})  # optional: {dataset: {fraction: number of lists}}
    if not isinstance(lists, dict) or not all(isinstance(v, dict) for v in lists.values()):
        raise ConfigError("benchmark run description: fewshot_lists maps dataset -> {fraction: number of lists}, "
                          f"got {lists!r}")


def _published_columns(comparison: Comparison) -> dict:
    entry = comparison.entry
    published = (entry.miou, entry.reference, entry.url) if entry else (None, None, None)
    return dict(zip(PUBLISHED_COLUMNS, (*published, comparison.note or None)))


def _file_rows(tables: list[Table]) -> list[dict]:
    return [row_of_record(record, _published_columns(cell.comparison))
            for table in tables for cell in table.cells.values() for record in cell.records]


def _figure_rows(table: Table) -> list[dict]:
    rows = []
    for (kind, column), cell in table.cells.items():
        published = cell.comparison.entry.miou if cell.comparison.entry else None
        row = {"features": FEATURE_LABELS[kind], "published_percent": published,
               "published_differs": bool(published is not None and cell.comparison.note)}
        if table.entry.by_size:  # at the size asked for, unless the images could not fill it
            held = table.capped(column)
            row.update(bank_size=held[0] if held else column, bank_size_requested=column,
                       miou=cell.mean_percent / 100)
        else:
            row.update(fraction=column, miou_mean=cell.mean_percent / 100, miou_std=cell.std_percent / 100)
        rows.append(row)
    return rows


def _write_figure(path: Path, tables: list[Table], run: dict) -> None:
    """The figure of one dataset's tables (its cells done counted over all of them)."""
    import matplotlib.pyplot as plt

    from segfungi.inference.viz import PUBLISHED_DIFFERS_NOTE, RANDOM_INIT_NOTE, protocol_figure

    words, is_random = weights_words(run["weights"])
    by_protocol = {t.protocol: (t.entry, _figure_rows(t)) for t in tables if t.cells}
    done, planned, _ = progress(tables)
    context = f"{words}; {run['device']}; {done} of {planned} table cells done"
    if is_random:
        context += f"\n{RANDOM_INIT_NOTE}"
    if any(r["published_differs"] for _, rows in by_protocol.values() for r in rows):
        context += f"\n{PUBLISHED_DIFFERS_NOTE}"
    if tables[0].generated:
        context += "\ngenerated demo data: a pipeline check, no published numbers shown"
    title = f"{run['model']}, {tables[0].dataset_title}: in-context segmentation"
    panels = [(entry.axis, rows, entry.x_label, entry.panel_title) for entry, rows in by_protocol.values()]
    fig = protocol_figure(panels, title, context)
    tmp = temporary_name(path)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, err) from None
    finally:
        plt.close(fig)


def write_report(out: str | Path, records: list[dict], run: dict) -> dict[str, Path]:
    """Write results.md, .csv, .json, .tex and one <dataset>.png per dataset with a
    measured cell into `out`; returns {file name: path} of what was written.

    ConfigError for a record that is not one the engine writes, two records of one cell
    and trial, records of several models, or a `run` without RUN_FIELDS."""
    _check_run(run)
    tables = build_tables(records, run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _file_rows(tables)
    written = {"results.md": out / "results.md", "results.csv": out / "results.csv",
               "results.json": out / "results.json", "results.tex": out / "results.tex"}
    write_text_atomic(written["results.md"], render_markdown(tables, run))
    write_text_atomic(written["results.csv"], rows_to_csv(rows))
    write_json_atomic(written["results.json"], {"run": run, "records": rows})
    write_text_atomic(written["results.tex"], render_latex(tables, run))
    for dataset in dict.fromkeys(t.dataset for t in tables):
        mine = [t for t in tables if t.dataset == dataset]
        if any(t.cells for t in mine):  # nothing measured yet: nothing to plot
            written[f"{dataset}.png"] = out / f"{dataset}.png"
            _write_figure(written[f"{dataset}.png"], mine, run)
    return written


def summary_table(records: list[dict], run: dict | None = None) -> str:
    """The records' tables as plain text (mIoU %, measured (published)), for a terminal;
    with `run`, also its planned cells not done yet ("–")."""
    if run is not None:
        _check_run(run)
    return summary_text(build_tables(records, run))


def read_records(path: str | Path) -> list[dict]:
    """The records a results.json or results.csv holds (checked like write_report's), so
    a report can be written again from its files."""
    path = Path(path)
    if path.suffix == ".json":
        document = read_json(path)
        if not isinstance(document, dict) or not isinstance(document.get("records"), list):
            raise ConfigError(f"{path}: not a segfungi benchmark results.json (no 'records' list)")
        rows = document["records"]
    elif path.suffix == ".csv":
        try:
            rows = rows_from_csv(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
        except ValueError as err:  # a number or JSON cell that does not parse
            raise ConfigError(f"{path}: a cell does not read as its column's type ({err})") from None
    else:
        raise ConfigError(f"{path}: give a benchmark's results.json or results.csv")
    try:
        records = [record_from_row(row) for row in rows]
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{path}: a row lacks the column {err}: not a segfungi benchmark results file") from None
    return checked_records(records)
