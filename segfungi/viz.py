"""Pictures of masks and plots of results, saved to files (matplotlib with Agg, PIL).

Masks are H×W uint8 class ids with 255 = ignore; a palette is a P×3 uint8 array (P is
the number of classes, or 256 like VOC's). Every plotting function writes one PNG and
returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

IGNORE = 255
# Colour of ignore pixels when the palette has no entry 255 (VOC's own is (224, 224, 192)).
IGNORE_COLOUR = (255, 255, 255)


# ------------------------------------------------------------------ colour helpers
def full_palette(palette) -> np.ndarray:
    """256×3 uint8 lookup table: the given colours, then black, IGNORE_COLOUR at 255."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    table = np.zeros((256, 3), dtype=np.uint8)
    table[IGNORE] = IGNORE_COLOUR
    table[: len(palette)] = palette
    return table


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """H×W class ids -> H×W×3 uint8 colours."""
    return full_palette(palette)[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """Blend the mask's colours over the image; ignore pixels show the plain image."""
    image = np.asarray(image, dtype=np.uint8)
    mask = np.asarray(mask, dtype=np.uint8)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, palette).astype(np.float32)
    labelled = (mask != IGNORE)[..., None]
    return np.where(labelled, np.rint(blended), image).astype(np.uint8)


def present_classes(masks: Sequence[np.ndarray | None], num_classes: int) -> list[int]:
    """Sorted class ids that occur in any of the masks (ignore and unknown ids left out)."""
    found: set[int] = set()
    for mask in masks:
        if mask is not None:
            found.update(int(c) for c in np.unique(mask))
    return sorted(c for c in found if c < num_classes)


def _rgb01(colour) -> tuple[float, float, float]:
    return tuple(float(v) / 255 for v in colour)


def _legend_handles(class_ids: list[int], classes: Sequence[str], palette, with_ignore: bool) -> list[Patch]:
    table = full_palette(palette)
    handles = [Patch(facecolor=_rgb01(table[c]), edgecolor="0.3", label=classes[c]) for c in class_ids]
    if with_ignore:
        handles.append(Patch(facecolor=_rgb01(table[IGNORE]), edgecolor="0.3", label="ignore"))
    return handles


def _save(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ------------------------------------------------------------ prediction pictures
def plot_prediction_panels(
    images: Sequence[np.ndarray],
    masks: Mapping[str, Sequence[np.ndarray | None]],
    classes: Sequence[str],
    palette,
    path: str | Path,
    row_titles: Sequence[str] | None = None,
) -> Path:
    """One row per image: the image, then one panel per entry of `masks`, side by side.

    `masks` maps a column title to one mask per image, e.g. {"ground truth": [...],
    "embeddings": [...], "FUNGI": [...]}; a None mask leaves its panel empty. One legend
    below the grid names only the classes that appear somewhere in it."""
    columns = list(masks)
    num_rows = len(images)
    # Rows as tall as the images' mean aspect, so landscape photos leave no white bands.
    aspect = float(np.mean([image.shape[0] / image.shape[1] for image in images]))
    fig, axes = plt.subplots(num_rows, 1 + len(columns), squeeze=False, layout="constrained",
                             figsize=(2.6 * (1 + len(columns)), 2.6 * aspect * num_rows + 0.9))
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        if row_titles is not None:
            axes[row, 0].set_ylabel(row_titles[row], fontsize=8)
        for col, title in enumerate(columns, start=1):
            mask = masks[title][row]
            if mask is not None:
                axes[row, col].imshow(colorize(mask, palette), interpolation="nearest")
    for col, title in enumerate(["image", *columns]):
        axes[0, col].set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    every_mask = [m for column in masks.values() for m in column]
    shown = present_classes(every_mask, len(classes))
    with_ignore = any(m is not None and (m == IGNORE).any() for m in every_mask)
    handles = _legend_handles(shown, classes, palette, with_ignore)
    if handles:
        # At most 6 per row, columns balanced: the legend reads down its columns in class order.
        rows = -(-len(handles) // 6)
        fig.legend(handles=handles, loc="outside lower center", ncol=-(-len(handles) // rows),
                   fontsize=8, frameon=False)
    return _save(fig, path)


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, classes: Sequence[str], palette,
                        alpha: float = 0.5) -> np.ndarray:
    """The overlay at the image's own pixel size, with a legend strip on its right.

    Drawn with PIL rather than matplotlib so the image pixels are never resampled: the
    overlay lines up exactly with the image and its mask."""
    blended = overlay(image, mask, palette, alpha)
    height, width = mask.shape
    table = full_palette(palette)
    # Ignore pixels show the plain image (see overlay), so they get no legend entry.
    entries = [(classes[c], table[c]) for c in present_classes([mask], len(classes))]
    font_size = int(np.clip(height / 30, 11, 28))
    font = ImageFont.load_default(size=font_size)
    row_height, swatch, pad = int(font_size * 1.5), font_size, font_size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max([measure.textbbox((0, 0), name, font=font)[2] for name, _ in entries] + [0])
    legend_width = 3 * pad + swatch + text_width if entries else 0
    canvas = Image.new("RGB", (width + legend_width, max(height, pad + row_height * len(entries))), "white")
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (name, colour) in enumerate(entries):
        top = pad + row * row_height
        left = width + pad
        draw.rectangle([left, top, left + swatch, top + swatch], fill=tuple(int(v) for v in colour),
                       outline=(80, 80, 80))
        draw.text((left + swatch + pad, top + swatch / 2), name, fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


# --------------------------------------------------------------------------- plots
def plot_per_class_iou(results: Mapping, path: str | Path, title: str | None = None) -> Path:
    """Horizontal bars of per-class IoU (%), one series per result.

    `results` is one evaluation results dict (with 'per_class_iou' and 'miou'), or a
    mapping label -> results dict to compare runs (e.g. embeddings vs FUNGI). Classes
    absent from both ground truth and predictions (IoU n/a) get no bar. A dashed
    line marks each series' mIoU."""
    series = {"": results} if "per_class_iou" in results else dict(results)
    classes = list(next(iter(series.values()))["per_class_iou"])
    bar_height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.22 * len(classes) * max(1, len(series) / 2)),
                           layout="constrained")
    positions = np.arange(len(classes))
    for i, (label, result) in enumerate(series.items()):
        ious = [_percent(result["per_class_iou"].get(c)) for c in classes]
        offset = (i - (len(series) - 1) / 2) * bar_height
        bars = ax.barh(positions + offset, np.nan_to_num(ious), height=bar_height, label=label or None)
        ax.axvline(100 * result["miou"], color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1,
                   label=f"{label + ' ' if label else ''}mIoU {100 * result['miou']:.1f}")
    for position, name in zip(positions, classes):
        if all(np.isnan(_percent(r["per_class_iou"].get(name))) for r in series.values()):
            ax.text(1, position, "n/a", va="center", fontsize=7, color="0.4")
    ax.set_yticks(positions, classes, fontsize=8)
    ax.invert_yaxis()  # first class on top, as in the results table
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _percent(iou) -> float:
    return float("nan") if iou is None else 100 * float(iou)


def plot_miou_vs_bank_size(rows: list[dict], path: str | Path) -> Path:
    """One line per feature kind: mIoU (%) against bank size (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind in dict.fromkeys(r["features"] for r in rows):
        points = sorted((r["bank_size"], 100 * r["miou"]) for r in rows if r["features"] == kind)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=kind)
    ax.set_xscale("log")
    sizes = sorted({r["bank_size"] for r in rows})  # the sizes actually built, as ticks
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("memory bank size (patches)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_fewshot(summary: list[dict], path: str | Path) -> Path:
    """mIoU (%) mean ± std over seeds against the training subset, one line per feature kind.

    `summary` rows come from `segfungi.fewshot.summarise` (keys subset, images,
    features, miou_mean, miou_std); subsets are placed in the order of their image count."""
    subsets = sorted(dict.fromkeys(r["subset"] for r in summary),
                     key=lambda s: min(r["images"] for r in summary if r["subset"] == s))
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    for kind in dict.fromkeys(r["features"] for r in summary):
        cells = {r["subset"]: r for r in summary if r["features"] == kind}
        xs = [i for i, s in enumerate(subsets) if s in cells]
        ax.errorbar(xs, [100 * cells[subsets[i]]["miou_mean"] for i in xs],
                    yerr=[100 * cells[subsets[i]]["miou_std"] for i in xs],
                    marker="o", capsize=4, label=kind)
    images = {r["subset"]: r["images"] for r in summary}
    ax.set_xticks(range(len(subsets)), [s if s.endswith("images") else f"{s}\n({images[s]} images)" for s in subsets])
    ax.set_xmargin(0.15)
    ax.set_xlabel("training subset")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)
