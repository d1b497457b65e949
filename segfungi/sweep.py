"""mIoU against memory-bank size, for plain embeddings and FUNGI features.

A FUNGI bank carries its support index, which is exactly the embeddings bank of the
same size and sampling, so one build per size serves both feature kinds."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

from segfungi.bank import SUPPORT_DIR, build_bank
from segfungi.evaluate import evaluate

COLUMNS = ["features", "bank_size", "miou", "pixel_accuracy", "images", "eval_images_per_second", "bank"]


def run_sweep(settings: dict, out: str | Path | None = None, progress: bool = True) -> list[dict]:
    out = Path(out or settings["sweep"]["out"])
    kinds = list(settings["sweep"]["features"])
    rows = []
    for size in settings["sweep"]["sizes"]:
        bank_settings = copy.deepcopy(settings)
        bank_settings["bank"]["size"] = int(size)
        top_kind = "fungi" if "fungi" in kinds else "embeddings"
        bank_dir = build_bank(bank_settings, out / "banks" / f"{top_kind}-{size}", resume=True,
                              kind=top_kind, progress=progress)
        for kind in kinds:
            path = bank_dir if kind == top_kind else bank_dir / SUPPORT_DIR
            results = evaluate(bank_settings, path, progress=progress)
            rows.append(_row(kind, size, results))
            print(f"{kind:>10}  bank {size:>9}  mIoU {100 * results['miou']:5.1f}", flush=True)
    write_table(rows, out)
    return rows


def _row(kind: str, size: int, results: dict) -> dict:
    return {
        "features": kind,
        "bank_size": int(size),
        "miou": results["miou"],
        "pixel_accuracy": results["pixel_accuracy"],
        "images": results["images"],
        "eval_images_per_second": results["timings"]["images_per_second"],
        "bank": results["bank"],
    }


def write_table(rows: list[dict], out: Path) -> None:
    from segfungi.viz import describe_banks, plot_miou_vs_bank_size

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
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
