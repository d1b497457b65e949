"""mIoU against memory-bank size, for plain embeddings and FUNGI features.

A FUNGI bank carries its support index, which is exactly the embeddings bank of the
same size and sampling, so one build per size serves both feature kinds.

A size the training images cannot fill (more than images × epochs × 1024 patches)
gives the largest bank they can; sizes that end up as the same bank are built and
evaluated once, one warning says so, and every row, table and plot carries the size
actually built (`bank_size`) next to the sizes asked for (`requested_sizes`)."""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

from segfungi.api import planned_bank
from segfungi.bank import MemoryBank
from segfungi.experiments.cells import bank_features, run_cell

COLUMNS = ["features", "bank_size", "requested_sizes", "train_images", "miou", "pixel_accuracy", "images",
           "eval_images_per_second", "bank"]
# sweep.csv names its columns for what they hold: mIoU and pixel accuracy are fractions in
# [0, 1] there (as in sweep.json and evaluate()'s results), while the table and plot show %.
CSV_NAMES = {"miou": "miou_fraction", "pixel_accuracy": "pixel_accuracy_fraction"}


def resolve_sizes(settings: dict, sizes) -> dict[int, list[int]]:
    """{bank size actually built: the requested sizes that give it}, in request order;
    warns once when a size cannot be met."""
    built: dict[int, list[int]] = {}
    plan = None
    for size in sizes:
        bank_settings = copy.deepcopy(settings)
        bank_settings["bank"]["size"] = int(size)
        plan = planned_bank(bank_settings)
        built.setdefault(plan.num_patches, []).append(int(size))
    most = plan.patches_per_image * plan.num_items if plan else 0
    unmet = {actual: asked for actual, asked in built.items() if len(asked) > 1 or asked[0] > most}
    if unmet:
        said = "; ".join(f"{', '.join(map(str, asked))} -> {actual}" for actual, asked in unmet.items())
        print(f"segfungi: warning: the {plan.num_images} training images × {plan.aug_epochs} epoch(s) × "
              f"{plan.patches_per_image} patches cannot give every bank size asked for ({said}); "
              "each bank is built once and labelled with the size it holds", file=sys.stderr, flush=True)
    return built


def run_sweep(settings: dict, out: str | Path | None = None, progress: bool = True) -> list[dict]:
    out = Path(out or settings["sweep"]["out"])
    kinds = list(settings["sweep"]["features"])
    top_kind = bank_features(kinds)
    rows = []
    for size, requested in resolve_sizes(settings, settings["sweep"]["sizes"]).items():
        bank_settings = copy.deepcopy(settings)
        bank_settings["bank"]["size"] = size  # the bank it resolves to: one build serves all requests
        for cell in run_cell(bank_settings, out / "banks" / f"{top_kind}-{size}", kinds, progress):
            rows.append(_row(cell.features, requested, cell.results, cell.bank))
            print(f"{cell.features:>10}  bank {cell.results['bank_size']:>9}  mIoU {100 * cell.results['miou']:5.1f}",
                  flush=True)
    write_table(rows, out)
    return rows


def _row(kind: str, requested: list[int], results: dict, bank: MemoryBank) -> dict:
    return {
        "features": kind,
        "bank_size": int(results["bank_size"]),
        "requested_sizes": " ".join(map(str, requested)),
        "train_images": bank.identity.dataset.num_images,
        "miou": results["miou"],
        "pixel_accuracy": results["pixel_accuracy"],
        "images": results["images"],
        "eval_images_per_second": results["timings"]["images_per_second"],
        "bank": results["bank"],
    }


def write_table(rows: list[dict], out: Path) -> None:
    from segfungi.inference.viz import describe_banks, plot_miou_vs_bank_size

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[CSV_NAMES.get(c, c) for c in COLUMNS])
        writer.writeheader()
        writer.writerows({CSV_NAMES.get(c, c): row[c] for c in COLUMNS} for row in rows)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    plot_miou_vs_bank_size(rows, out / "miou_vs_bank_size.png",
                           context=describe_banks([r["bank"] for r in rows], [r["images"] for r in rows]))


def sweep_table(rows: list[dict]) -> str:
    sizes = sorted({r["bank_size"] for r in rows})
    kinds = list(dict.fromkeys(r["features"] for r in rows))
    cell = {(r["features"], r["bank_size"]): r["miou"] for r in rows}
    lines = [f"{'features':<12}" + "".join(f"{s:>12}" for s in sizes)]
    for kind in kinds:
        values = "".join(f"{100 * cell[(kind, s)]:12.1f}" if (kind, s) in cell else f"{'-':>12}" for s in sizes)
        lines.append(f"{kind:<12}{values}")
    return "mIoU (%) by bank size\n" + "\n".join(lines)
