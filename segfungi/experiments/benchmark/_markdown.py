"""results.md and the plain-text summary of a benchmark: the tables of segfungi.experiments.benchmark._tables
under a header that says what was run.

A cell reads `50.9 (50.7)¹`: the measured mIoU in %, then the published one and the
footnote naming its source; `(50.7†)` marks a published number whose settings differ
from the run's (the footnote says how). Few-shot cells read `26.0 ± 1.2` (mean ± sample
std over the trials), with `n=3` when the cell has other than the protocol's trials.
"""

from __future__ import annotations

from segfungi.experiments.benchmark._protocols import benchmark_protocol, protocol_names
from segfungi.experiments.benchmark._tables import Table, evaluations, progress
from segfungi.feature_kinds import FEATURE_LABELS
from segfungi.infra.weights import WeightsSource

__all__ = ["cell_text", "dates_text", "markdown_text", "render_markdown", "setup_line", "summary_text", "versions_text",
           "weights_words"]

MISSING = "–"
DIFFERS = "†"
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def markdown_text(text: str) -> str:
    """Text from the published files in Markdown: a lone `*` (voc_* presets) starts no emphasis."""
    return str(text).replace("*", r"\*").replace("|", r"\|")


def versions_text(versions: dict, separator: str = " · ") -> str:
    """'segfungi 0.4.0 · torch 2.5.1 · scann not installed'."""
    return separator.join(f"{name} {version or 'not installed'}" for name, version in versions.items())


def weights_words(weights_id: str) -> tuple[str, bool]:
    """(the weights in words, whether they are a random init)."""
    try:
        source = WeightsSource.parse(weights_id)
    except ValueError:
        return str(weights_id), False
    return source.describe(), source.is_random


def dates_text(run: dict) -> str:
    """'started A, resumed B and C, finished D': every run's start (run["starts"] where
    the run records them), so a resumed benchmark keeps its first date."""
    starts = list(run.get("starts") or [run["started"]])
    text = f"started {starts[0]}"
    if len(starts) > 1:
        text += f", resumed {', '.join(starts[1:])}"
    return f"{text}, finished {run['finished'] or 'not yet'}"


def cell_text(table: Table, kind: str, column, footnote_marks: bool = True) -> str:
    cell = table.cells.get((kind, column))
    if cell is None:
        return MISSING
    text = f"{cell.mean_percent:.1f}"
    if not table.entry.by_size:  # several trials: their spread
        text += f" ± {cell.std_percent:.1f}"
    entry, note = cell.comparison.entry, cell.comparison.note
    if entry is not None:
        text += f" ({entry.miou:.1f}{DIFFERS if note else ''})"
        if footnote_marks:
            text += str(table.notes.marks[(kind, column)].number).translate(SUPERSCRIPTS)
    if cell.trials != table.trials_planned[column]:
        text += f", n={cell.trials}"
    return text


def _values(numbers) -> str:
    """'10,582' for one value, '83 / 84' for a few, '80–90' for many."""
    numbers = sorted(set(numbers))
    if len(numbers) > 3:
        return f"{numbers[0]:,}–{numbers[-1]:,}"
    return " / ".join(f"{n:,}" if isinstance(n, int) else str(n) for n in numbers)


def setup_line(table: Table) -> str:
    """What the table's banks were built from and evaluated on, read from its records."""
    records = table.records
    if not records:
        return "No cell of this table has been run yet."
    split = _values(r["settings"]["data"]["train_split"] for r in records)
    val_split = _values(r["settings"]["data"]["val_split"] for r in records)
    epochs = sorted({r["aug_epochs"] for r in records})
    per = "" if table.entry.by_size else " per list"
    return (f"Banks from {split} ({_values(r['train_images'] for r in records)} images{per}, {_values(epochs)} "
            f"augmentation epoch{'' if epochs == [1] else 's'}, {_values(r['patches_per_view'] for r in records)} "
            f"patches per view, {_values(r['image_size'] for r in records)} px); evaluated on "
            f"{_values(r['eval_images'] for r in records)} {val_split} images.")


def _markdown_table(table: Table) -> list[str]:
    notes = table.notes
    title = table.entry.title
    lines = [f"### {title[0].upper()}{title[1:]}", "", setup_line(table), "",
             "| features | " + " | ".join(table.column_label(c) for c in table.columns) + " |",
             "|---|" + "---:|" * len(table.columns)]
    for kind in table.features:
        cells = [FEATURE_LABELS[kind], *(cell_text(table, kind, c) for c in table.columns)]
        lines.append(f"| {' | '.join(cells)} |")
    lines.append("")
    for footnote in notes.footnotes:
        text = (f"{str(footnote.number).translate(SUPERSCRIPTS)} Published: {footnote.entry.reference} (see Sources). "
                f"Its settings: {markdown_text(footnote.entry.settings_note)}")
        if footnote.differs:
            text += f" **Settings differ ({DIFFERS}):** {markdown_text(footnote.differs)}."
        lines += [text, ""]
    for note, cells in notes.missing:
        lines += [f"No published number{' for ' + ', '.join(cells) if cells else 's'}: {markdown_text(note)}.", ""]
    if table.underfilled():
        lines += ["(holds …): the training images × augmentation epochs × patches per view give fewer patches than "
                  "the column asks for; the bank holds all of them. (Elsewhere a bank holds up to one patch per "
                  "view less than asked: every view gives the same whole number of patches.)", ""]
    return lines


def _sources(tables: list[Table]) -> list[str]:
    entries = [f.entry for t in tables for f in t.notes.footnotes]
    sources = dict.fromkeys((e.source, e.citation, e.url) for e in entries)
    if not sources:
        return []
    return ["## Sources", "", *(f"- {name}: {citation}, <{url}>" for name, citation, url in sources), ""]


def _header(tables: list[Table], run: dict) -> list[str]:
    words, is_random = weights_words(run["weights"])
    done, planned, missing = progress(tables)
    records = [r for t in tables for r in t.records]
    lines = [f"# In-context segmentation benchmark: `{run['model']}`", ""]
    if is_random:
        lines += [f"> **⚠ RANDOM-INIT BACKBONE: these numbers measure nothing about FUNGI.** {words}: a pipeline "
                  "check of segfungi; FUNGI's gain needs pretrained weights.", ""]
    generated = list(dict.fromkeys(t.dataset for t in tables if t.generated))
    if generated:
        lines += [f"> **⚠ GENERATED DEMO DATA ({', '.join(generated)}): a pipeline check, not a measurement on the "
                  "real dataset.** No published number is shown beside these cells.", ""]
    evaluated, evaluations_planned = evaluations(tables)
    progress_text = f"{done} of {planned} table cells done ({evaluated} of {evaluations_planned} evaluations)"
    if missing:
        progress_text += f"; not done: {', '.join(missing)}"
    lines += ["| | |", "|---|---|", f"| model | `{run['model']}` |", f"| weights | {words} (`{run['weights']}`) |",
              f"| device | {run['device']} |", f"| versions | {versions_text(run['versions'])} |",
              f"| date | {dates_text(run)} |",
              f"| cells | {progress_text} |"]
    other_devices = sorted({r["device"] for r in records} - {run["device"]})
    if other_devices:
        lines.append(f"| other devices | some cells were measured on {', '.join(other_devices)} |")
    other_versions = sorted({versions_text(r["versions"]) for r in records} - {versions_text(run["versions"])})
    if other_versions:
        lines.append(f"| other versions | some cells were measured with {'; '.join(other_versions)} |")
    summaries = "".join(f"{s} " for s in (benchmark_protocol(p).summary for p in protocol_names()) if s)
    lines += ["", "mIoU (%) on each validation split: measured, then in parentheses the published number where the "
              f"model, dataset and cell match a source (footnotes). {summaries}{MISSING}: not run yet.", ""]
    return lines


def render_markdown(tables: list[Table], run: dict) -> str:
    lines = _header(tables, run)
    for dataset in dict.fromkeys(t.dataset for t in tables):
        mine = [t for t in tables if t.dataset == dataset]
        lines += [f"## {mine[0].dataset_title}", ""]
        for table in mine:
            lines += _markdown_table(table)
    lines += _sources(tables)
    return "\n".join(lines).rstrip() + "\n"


def summary_text(tables: list[Table]) -> str:
    """The tables as aligned plain text: mIoU (%) measured (published), mean ± std."""
    blocks = []
    for table in tables:
        header = ["features", *(table.column_label(c) for c in table.columns)]
        rows = [[FEATURE_LABELS[k], *(cell_text(table, k, c, footnote_marks=False) for c in table.columns)]
                for k in table.features]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(row, widths)))
                 for row in [header, *rows]]
        blocks.append("\n".join([f"{table.title}: mIoU (%), measured (published)", *lines]))
    if any(cell.comparison.note and cell.comparison.entry for t in tables for cell in t.cells.values()):
        blocks.append(f"{DIFFERS}: published with other settings than this run's (results.md says how)")
    return "\n\n".join(blocks)
