"""results.tex: the benchmark's tables as LaTeX (booktabs), one `table` per protocol and
dataset, to paste into a paper.

Each feature kind's row of measured mIoU (%) is followed, where the sources publish
numbers for it, by a `published` row; a published number whose settings differ from
the run's is marked $^\\dagger$ and the caption says how. Few-shot cells are
`mean $\\pm$ std` over the trials. Text from names and notes is escaped (`latex_text`).
"""

from __future__ import annotations

import re

from segfungi.experiments.benchmark._markdown import dates_text, versions_text, weights_words
from segfungi.experiments.benchmark._tables import Table
from segfungi.feature_kinds import FEATURE_LABELS

__all__ = ["latex_text", "render_latex"]

ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
SUPERSCRIPT_DIGITS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
TO_SUPERSCRIPT = str.maketrans("0123456789", SUPERSCRIPT_DIGITS)
FROM_SUPERSCRIPT = str.maketrans(SUPERSCRIPT_DIGITS, "0123456789")
SYMBOLS = {"×": r"$\times$", "±": r"$\pm$", "–": "--", "—": "---", "→": r"$\to$", "†": r"$^\dagger$",
           "≈": r"$\approx$", "…": r"\ldots{}", "·": r"$\cdot$"}
MISSING = "--"
DAGGER = r"$^\dagger$"


def latex_text(text: str) -> str:
    """Plain text as LaTeX: special characters escaped, 1024×10⁴ (or 1024×10^4) as math."""
    text = re.sub(r"×10\^(\d+)", lambda m: "×10" + m.group(1).translate(TO_SUPERSCRIPT), str(text))
    text = "".join(ESCAPES.get(ch, ch) for ch in text)
    text = re.sub(f"×10([{SUPERSCRIPT_DIGITS}]+)",
                  lambda m: "$\\times 10^{" + m.group(1).translate(FROM_SUPERSCRIPT) + "}$", text)
    return "".join(SYMBOLS.get(ch, ch) for ch in text)


def _measured(table: Table, kind: str, column) -> str:
    cell = table.cells.get((kind, column))
    if cell is None:
        return MISSING
    text = f"{cell.mean_percent:.1f}"
    if not table.entry.by_size:  # several trials: their spread
        text += f" $\\pm$ {cell.std_percent:.1f}"
    if cell.trials != table.trials_planned[column]:
        text += f"\\,(n{{=}}{cell.trials})"
    return text


def _references(table: Table) -> list[str]:
    return list(dict.fromkeys(f.entry.reference for f in table.notes.footnotes))


def _published(table: Table, kind: str, column) -> str:
    cell = table.cells.get((kind, column))
    if cell is None or cell.comparison.entry is None:
        return MISSING
    text = f"{cell.comparison.entry.miou:.1f}"
    references = _references(table)
    if len(references) > 1:  # several sources in one table: a number says which
        text += f"$^{{{references.index(cell.comparison.entry.reference) + 1}}}$"
    return text + (DAGGER if cell.comparison.note else "")


def _caption(table: Table, run: dict) -> str:
    words, is_random = weights_words(run["weights"])
    dataset = table.dataset_title
    parts = [f"In-context segmentation on {dataset}, {table.entry.title}: mIoU (%) of "
             f"{run['model']} ({words})"]
    if not table.entry.by_size:
        parts.append("Mean ± sample std over the trials (fixed lists)")
    if is_random:
        parts.append("RANDOM-INIT BACKBONE: these numbers measure nothing about FUNGI")
    if table.generated:
        parts.append("GENERATED DEMO DATA: a pipeline check, not a measurement on the real dataset")
    notes = table.notes
    references = _references(table)
    for number, reference in enumerate(references, start=1):
        citation = next(f.entry.citation for f in notes.footnotes if f.entry.reference == reference)
        mark = f"({number}) " if len(references) > 1 else ""
        parts.append(f"{mark}Published: {reference} ({citation})")
    for differs in dict.fromkeys(f.differs for f in notes.footnotes if f.differs):
        parts.append(f"† {differs}")
    for note, cells in notes.missing:
        parts.append(f"No published number{' for ' + ', '.join(cells) if cells else 's'}: {note}")
    if table.underfilled():
        parts.append("(holds …): the training images give fewer patches than the column asks for")
    return ". ".join(latex_text(p) for p in parts) + "."


def _table(table: Table, run: dict) -> list[str]:
    columns = table.columns
    header = " & ".join(["Features", *(latex_text(table.column_label(c)) for c in columns)])
    lines = [f"% {table.title}", r"\begin{table}[t]", r"\centering", f"\\caption{{{_caption(table, run)}}}",
             f"\\label{{tab:segfungi-{table.dataset}-{table.protocol}}}",
             f"\\begin{{tabular}}{{l{'r' * len(columns)}}}", r"\toprule", header + r" \\", r"\midrule"]
    for kind in table.features:
        lines.append(" & ".join([FEATURE_LABELS[kind], *(_measured(table, kind, c) for c in columns)]) + r" \\")
        published = [_published(table, kind, c) for c in columns]
        if any(p != MISSING for p in published):
            lines.append(" & ".join([r"\quad\textit{published}", *published]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return lines


def render_latex(tables: list[Table], run: dict) -> str:
    lines = [f"% segfungi benchmark of {run['model']} ({run['weights']}), {run['device']}; "
             f"{versions_text(run['versions'], ', ')}",
             f"% {dates_text(run)}. Needs \\usepackage{{booktabs}}.", ""]
    for table in tables:
        lines += _table(table, run)
    return "\n".join(lines)
