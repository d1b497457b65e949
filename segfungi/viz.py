"""Plots people would rather look at than read, saved to files with matplotlib."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def plot_miou_vs_bank_size(rows: list[dict], path: str | Path) -> Path:
    """One line per feature kind: mIoU (%) against bank size (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind in dict.fromkeys(r["features"] for r in rows):
        points = sorted((r["bank_size"], 100 * r["miou"]) for r in rows if r["features"] == kind)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("memory bank size (patches)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
