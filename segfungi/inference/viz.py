"""Pictures of masks and plots of results, saved to files (matplotlib with Agg, PIL).

Masks are H×W uint8 class ids with 255 = ignore; a palette is a P×3 uint8 array (P is
the number of classes, or 256 like VOC's). Every `plot_*` function writes one PNG and
returns its path; the matching `*_figure` function returns the matplotlib figure.

Every plot says what was run: a title, and a `context` below it (`describe_banks` reads
the backbone, its weights, the dataset and the image counts from the banks' manifests).
Axes of mIoU start at 0; bank-size ticks sit at the sizes actually built; in per-class
IoU bars a measured 0 (a diamond at 0) differs from a class that is absent (a grey
hatched band)."""

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


def outline_regions(picture: np.ndarray, mask: np.ndarray, palette) -> np.ndarray:
    """Draw every labelled region's outline over `picture` (an overlay of `mask`), legible on
    any image: the outermost ring of each region in white or black, whichever contrasts with
    the class colour, and the ring inside it in the class colour, opaque.

    A blend alone hides classes whose colour is close to the image (VOC's dark maroon cat
    at alpha 0.5 on a dark photo); with these rings either the class colour or its contrast
    ring stands out on dark and bright images alike. Rings are 1 px per 250 px of the
    shorter side (at least 1); ignore pixels get none."""
    mask = np.asarray(mask, dtype=np.uint8)
    width = max(1, round(min(mask.shape) / 250))
    outer = _grow(_label_changes(mask), width - 1) & (mask != IGNORE)
    inner = _grow(outer, width) & ~outer & (mask != IGNORE)
    colours = full_palette(palette)
    luminance = colours.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    contrast = np.where((luminance < 128)[:, None], 255, 0).astype(np.uint8)
    out = np.array(picture, dtype=np.uint8, copy=True)
    out[outer] = contrast[mask[outer]]
    out[inner] = colours[mask[inner]]
    return out


def _label_changes(mask: np.ndarray) -> np.ndarray:
    """True where a 4-neighbour holds another label."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:-1] |= mask[:-1] != mask[1:]
    return edge


def _grow(region: np.ndarray, steps: int) -> np.ndarray:
    """`region` dilated `steps` times with the 4-neighbourhood."""
    region = region.copy()
    for _ in range(steps):
        grown = region.copy()
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        region = grown
    return region


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
    title: str | None = None,
    context: str | None = None,
) -> Path:
    """One row per image: the image, then one panel per entry of `masks`, side by side.

    `masks` maps a column title to one mask per image, e.g. {"ground truth": [...],
    "embeddings": [...], "FUNGI": [...]}; a None mask leaves its panel empty. One legend
    below the grid names only the classes that appear somewhere in it. `title` and
    `context` (e.g. from describe_banks) go above the grid."""
    return _save(prediction_panels_figure(images, masks, classes, palette, row_titles, title, context), path)


def prediction_panels_figure(images, masks, classes, palette, row_titles=None, title=None, context=None):
    """The figure of plot_prediction_panels."""
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
        for col, column in enumerate(columns, start=1):
            mask = masks[column][row]
            if mask is not None:
                axes[row, col].imshow(colorize(mask, palette), interpolation="nearest")
    for col, column in enumerate(["image", *columns]):
        axes[0, col].set_title(column, fontsize=10)
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
    if title or context:
        _titled(fig, title or "predictions", context)
    return fig


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, classes: Sequence[str], palette,
                        alpha: float = 0.5, caption: str | None = None) -> np.ndarray:
    """The overlay at the image's own pixel size, its regions outlined (`outline_regions`),
    with a legend strip on its right and, when `caption` is given (e.g. from
    describe_banks), its lines below.

    Drawn with PIL rather than matplotlib so the image pixels are never resampled: the
    overlay keeps the top-left corner and lines up exactly with the image and its mask."""
    blended = outline_regions(overlay(image, mask, palette, alpha), mask, palette)
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
    caption_lines = caption.splitlines() if caption else []
    caption_font = ImageFont.load_default(size=max(10, font_size * 3 // 4))
    caption_width = max([measure.textbbox((0, 0), line, font=caption_font)[2] for line in caption_lines] + [0])
    body_height = max(height, pad + row_height * len(entries))
    caption_height = (pad + len(caption_lines) * int(caption_font.size * 1.4)) if caption_lines else 0
    canvas = Image.new("RGB", (max(width + legend_width, caption_width + 2 * pad), body_height + caption_height),
                       "white")
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (name, colour) in enumerate(entries):
        top = pad + row * row_height
        left = width + pad
        draw.rectangle([left, top, left + swatch, top + swatch], fill=tuple(int(v) for v in colour),
                       outline=(80, 80, 80))
        draw.text((left + swatch + pad, top + swatch / 2), name, fill="black", font=font, anchor="lm")
    for number, line in enumerate(caption_lines):
        draw.text((pad, body_height + pad + number * int(caption_font.size * 1.4)), line, fill="black",
                  font=caption_font)
    return np.asarray(canvas)


# ------------------------------------------------------------------ what was run
# Said under every plot of a random-init run, whose FUNGI numbers are no measurement of FUNGI.
RANDOM_INIT_NOTE = "random-init backbone: a pipeline check; FUNGI's gain needs pretrained weights"
# Said under a benchmark figure with a published point whose source's settings differ from the run's.
PUBLISHED_DIFFERS_NOTE = "† published with other settings than this run's (results.md says how)"


def describe_banks(banks: Sequence, eval_images: int | Sequence[int] | None = None) -> str:
    """What a plot of these banks' results shows, in short lines read from the banks:
    the backbone and its weights; the dataset, the training images (and whether they are
    segfungi's generated demo data) and the images evaluated; for a random-init backbone,
    that FUNGI's gain needs pretrained weights.

    `banks`: bank folders or `MemoryBank`s (anything with `.identity` and `.settings`);
    `eval_images` the evaluated image count(s)."""
    banks = [bank if hasattr(bank, "identity") else _open(bank) for bank in banks]
    if not banks:
        return ""
    identities = [bank.identity for bank in banks]
    backbones = _joined(f"{i.backbone.name}, {i.backbone.weights.describe()}" for i in identities)
    data = [bank.settings.get("data", {}) for bank in banks]
    datasets = _joined(f"{i.dataset.name} {i.dataset.split}" for i in identities)
    train = _joined(str(n) for n in sorted({int(i.dataset.num_images) for i in identities}))
    line = f"{datasets}: {train} training images"
    if any(_is_demo_data(d.get("root")) for d in data):
        line += " (generated demo data)"
    if eval_images is not None:
        counts = [eval_images] if isinstance(eval_images, (int, np.integer)) else list(eval_images)
        val_split = _joined(str(d.get("val_split", "val")) for d in data)
        line += f", evaluated on {_joined(str(n) for n in sorted(set(map(int, counts))))} {val_split} images"
    lines = [backbones, line]
    if any(i.backbone.weights.is_random for i in identities):
        lines.append(RANDOM_INIT_NOTE)
    return "\n".join(lines)


def _open(bank):
    from segfungi.bank import MemoryBank

    return MemoryBank(bank, verify="off")


def _joined(values) -> str:
    return " / ".join(dict.fromkeys(values))


def _is_demo_data(root) -> bool:
    from segfungi.data.demo import is_demo_root

    return is_demo_root(root)  # the one test of the marker, shared with the benchmark


def _titled(fig, title: str, context: str | None) -> None:
    """The title, with the context (what was run) on the lines below it."""
    fig.suptitle(title if not context else f"{title}\n{context}", fontsize=9)


def _y_from_zero(ax, highest: float) -> None:
    """mIoU axes start at 0 and end at the next multiple of 10 above the data (100 at most)."""
    ax.set_ylim(0, min(100.0, 10 * np.ceil((max(highest, 0.0) + 5) / 10)))


def size_label(size: int) -> str:
    """Bank sizes as tick labels: 20480 -> '20,480'."""
    return f"{int(size):,}"


# --------------------------------------------------------------------------- plots
def per_class_iou_figure(results: Mapping, title: str | None = None, context: str | None = None):
    """Horizontal bars of per-class IoU (%), one series per result (see plot_per_class_iou)."""
    from matplotlib.lines import Line2D

    series = {"": results} if "per_class_iou" in results else dict(results)
    classes = list(next(iter(series.values()))["per_class_iou"])
    bar_height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(6.5, 1.8 + 0.22 * len(classes) * max(1, len(series) / 2)),
                           layout="constrained")
    positions = np.arange(len(classes))
    absent = [all(np.isnan(_percent(r["per_class_iou"].get(c))) for r in series.values()) for c in classes]
    extra_handles = {}
    for position, is_absent in zip(positions, absent):
        if is_absent:  # a grey hatched band across the row: no IoU exists, unlike a bar of 0
            band = ax.barh(position, 100, height=0.8, color="none", hatch="////", edgecolor="0.7", linewidth=0)
            band.patches[0].set_gid("absent")
            ax.text(2, position, "absent", va="center", fontsize=7, color="0.35", style="italic")
            extra_handles["absent"] = Patch(facecolor="none", hatch="////", edgecolor="0.7",
                                            label="absent: in neither ground truth nor prediction")
    for i, (label, result) in enumerate(series.items()):
        ious = np.array([_percent(result["per_class_iou"].get(c)) for c in classes])
        offset = (i - (len(series) - 1) / 2) * bar_height
        bars = ax.barh(positions + offset, np.nan_to_num(ious), height=bar_height, label=label or None)
        colour = bars.patches[0].get_facecolor()
        ax.axvline(100 * result["miou"], color=colour, linestyle="--", linewidth=1,
                   label=f"{label + ' ' if label else ''}mIoU {100 * result['miou']:.1f}")
        # A bar of width 0 is invisible: mark a measured IoU of 0 with a diamond at 0.
        zero = (ious == 0) & ~np.array(absent)
        if zero.any():
            marks, = ax.plot(np.zeros(zero.sum()), positions[zero] + offset, linestyle="none", marker="D",
                             markersize=5, color=colour, markeredgecolor="black", clip_on=False)
            marks.set_gid("zero")
            extra_handles["zero"] = Line2D([], [], linestyle="none", marker="D", markersize=5, color="0.6",
                                           markeredgecolor="black", label="IoU 0 (class missed)")
    ax.set_yticks(positions, classes, fontsize=8)
    ax.invert_yaxis()  # first class on top, as in the results table
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.grid(True, axis="x", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    fig.legend(handles=handles + list(extra_handles.values()), loc="outside lower center", ncol=2,
               fontsize=8, frameon=False)
    _titled(fig, title or "per-class IoU", context)
    return fig


def plot_per_class_iou(results: Mapping, path: str | Path, title: str | None = None,
                       context: str | None = None) -> Path:
    """Horizontal bars of per-class IoU (%), one series per result; writes `path`.

    `results` is one evaluation results dict (with 'per_class_iou' and 'miou'), or a
    mapping label -> results dict to compare runs (e.g. embeddings vs FUNGI). A class
    with IoU 0 gets a diamond at 0; a class absent from ground truth and predictions
    (IoU n/a) gets a grey hatched band marked "absent". A dashed line marks each
    series' mIoU. `context` (e.g. from describe_banks) goes under the title."""
    return _save(per_class_iou_figure(results, title, context), path)


def _percent(iou) -> float:
    return float("nan") if iou is None else 100 * float(iou)


def bank_size_figure(rows: list[dict], title: str | None = None, context: str | None = None):
    """mIoU (%) against bank size (see plot_miou_vs_bank_size)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    for kind in dict.fromkeys(r["features"] for r in rows):
        points = sorted((int(r["bank_size"]), 100 * r["miou"]) for r in rows if r["features"] == kind)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=kind)
    sizes = sorted({int(r["bank_size"]) for r in rows})
    ax.set_xscale("log")
    # Ticks exactly at the sizes built, no others: log axes would add minor labels that collide.
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(sizes, [size_label(s) for s in sizes], rotation=30, ha="right", fontsize=8)
    ax.set_xmargin(0.1)
    _y_from_zero(ax, max(100 * r["miou"] for r in rows))
    ax.set_xlabel("memory bank size (patches, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _titled(fig, title or "mIoU against memory-bank size", context)
    return fig


def plot_miou_vs_bank_size(rows: list[dict], path: str | Path, context: str | None = None,
                           title: str | None = None) -> Path:
    """One line per feature kind: mIoU (%) against bank size (log scale); writes `path`.

    `rows` have features, bank_size (the size of the bank actually built) and miou; the
    x ticks are exactly those sizes. `context` (e.g. from describe_banks) goes under
    the title."""
    return _save(bank_size_figure(rows, title, context), path)


def fewshot_figure(summary: list[dict], title: str | None = None, context: str | None = None):
    """mIoU (%) mean ± std against the training subset (see plot_fewshot)."""
    subsets = sorted(dict.fromkeys(r["subset"] for r in summary),
                     key=lambda s: min(r["images"] for r in summary if r["subset"] == s))
    fig, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    highest = 0.0
    for kind in dict.fromkeys(r["features"] for r in summary):
        cells = {r["subset"]: r for r in summary if r["features"] == kind}
        xs = [i for i, s in enumerate(subsets) if s in cells]
        means = [100 * cells[subsets[i]]["miou_mean"] for i in xs]
        stds = [100 * cells[subsets[i]]["miou_std"] for i in xs]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=kind)
        highest = max([highest, *(m + s for m, s in zip(means, stds))])
    ax.set_xticks(range(len(subsets)), [_subset_label(s, summary) for s in subsets], fontsize=8)
    ax.set_xmargin(0.15)
    _y_from_zero(ax, highest)
    ax.set_xlabel("training subset")
    ax.set_ylabel("mIoU (%), mean ± std over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _titled(fig, title or "few-shot mIoU", context)
    return fig


def _subset_label(subset: str, summary: list[dict]) -> str:
    """'1/128\\n83 images\\nbank 84,992': the images and bank size actually used."""
    row = next(r for r in summary if r["subset"] == subset)
    lines = [subset] if subset.endswith("images") else [subset, f"{row['images']} images"]
    if "bank_size" in row:
        lines.append(f"bank {size_label(row['bank_size'])}")
    return "\n".join(lines)


def plot_fewshot(summary: list[dict], path: str | Path, context: str | None = None,
                 title: str | None = None) -> Path:
    """mIoU (%) mean ± std over seeds against the training subset, one line per feature
    kind; writes `path`.

    `summary` rows come from `segfungi.experiments.fewshot.summarise` (keys subset, images,
    features, miou_mean, miou_std, bank_size); subsets are placed in the order of their
    image count and labelled with the images and bank size used. `context` (e.g. from
    describe_banks) goes under the title."""
    return _save(fewshot_figure(summary, title, context), path)


# ------------------------------------------------------------- benchmark figures
def benchmark_figure(full: list[dict], fewshot: list[dict], title: str | None = None, context: str | None = None):
    """mIoU (%) of one dataset's benchmark cells: against bank size (full training split,
    log x, ticks at the sizes) and against the few-shot fraction (mean ± std error bars),
    a panel for each protocol that has rows. One colour per feature kind; a published
    number is a hollow marker of its kind's colour, labelled published: a circle, or a
    square marked † where the row's `published_differs` is true (its source's settings
    differ from the run's).

    `full` rows: features, bank_size (patches held), bank_size_requested (where the
    published number sits), miou (a fraction), published_percent (% or None).
    `fewshot` rows: features, fraction ("1/128"), miou_mean, miou_std (fractions),
    published_percent (% or None); fractions are placed in order of their value."""
    return protocol_figure([("size", full, "memory bank size (patches, log scale)", None),
                            ("fraction", fewshot, "few-shot fraction of the training split", None)], title, context)


def protocol_figure(panels: list[tuple], title: str | None = None, context: str | None = None):
    """`benchmark_figure` for any benchmark protocols: one panel per (axis, rows, x label,
    panel title or None) that has rows; axis "size" takes `full` rows, "fraction"
    `fewshot` rows (see benchmark_figure)."""
    draws = {"size": _bank_size_panel, "fraction": _fraction_panel}
    panels = [(draws[axis], rows, x_label, panel_title) for axis, rows, x_label, panel_title in panels if rows]
    if not panels:
        raise ValueError("benchmark_figure: no rows to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), layout="constrained", squeeze=False)
    kinds = list(dict.fromkeys(r["features"] for _, rows, _, _ in panels for r in rows))
    colours = {kind: f"C{i}" for i, kind in enumerate(kinds)}
    for ax, (draw, rows, x_label, panel_title) in zip(axes[0], panels):
        draw(ax, rows, colours)
        ax.set_xlabel(x_label)
        if panel_title:
            ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel("mIoU (%)")
        ax.grid(True, alpha=0.3)
        # Each kind's measured entry, then its published one (error bars would come last).
        entries = sorted(zip(*ax.get_legend_handles_labels()),
                         key=lambda entry: (kinds.index(entry[1].split(",")[0]), "published" in entry[1]))
        ax.legend(*zip(*entries), fontsize=8)
    _titled(fig, title or "in-context segmentation benchmark", context)
    return fig


def _published_points(ax, xs, rows, colour, kind) -> list[float]:
    """Hollow markers of `colour` at the rows' published values (None: no number), each
    labelled as published: a circle where the source's settings match the run's, a
    square marked † where they differ (row "published_differs"); the values drawn."""
    drawn = []
    for differs, marker, label in ((False, "o", f"{kind}, published"),
                                   (True, "s", f"{kind}, published † (other settings)")):
        shown = [(x, r["published_percent"]) for x, r in zip(xs, rows)
                 if r["published_percent"] is not None and bool(r.get("published_differs")) == differs]
        if shown:
            ax.plot([x for x, _ in shown], [v for _, v in shown], linestyle="none", marker=marker, markersize=9,
                    markerfacecolor="none", markeredgecolor=colour, markeredgewidth=1.5, label=label)
        drawn += [v for _, v in shown]
    return drawn


def _bank_size_panel(ax, rows: list[dict], colours: dict) -> None:
    from segfungi.published import format_bank_sizes

    highest = []
    for kind, colour in colours.items():
        mine = sorted((r for r in rows if r["features"] == kind), key=lambda r: r["bank_size"])
        if not mine:
            continue
        means = [100 * r["miou"] for r in mine]
        ax.plot([r["bank_size"] for r in mine], means, marker="o", color=colour, label=kind)
        highest += means + _published_points(ax, [r["bank_size_requested"] for r in mine], mine, colour, kind)
    # Ticks where points are: the sizes held, and the sizes asked for where a published number sits.
    sizes = sorted({int(r["bank_size"]) for r in rows}
                   | {int(r["bank_size_requested"]) for r in rows if r["published_percent"] is not None})
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the sizes: minor labels collide
    ax.set_xticks(sizes, format_bank_sizes(sizes), rotation=30, ha="right", fontsize=8)  # one notation
    ax.set_xmargin(0.1)
    _y_from_zero(ax, max(highest))


def _fraction_panel(ax, rows: list[dict], colours: dict) -> None:
    from fractions import Fraction

    fractions = sorted({r["fraction"] for r in rows}, key=Fraction)
    shift = 0.06  # kinds side by side, so their error bars do not hide each other
    highest = []
    for i, (kind, colour) in enumerate(colours.items()):
        mine = {r["fraction"]: r for r in rows if r["features"] == kind}
        if not mine:
            continue
        xs = [j + (i - (len(colours) - 1) / 2) * shift for j, f in enumerate(fractions) if f in mine]
        cells = [mine[f] for f in fractions if f in mine]
        means = [100 * r["miou_mean"] for r in cells]
        stds = [100 * r["miou_std"] for r in cells]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, color=colour, label=f"{kind}, mean ± std")
        highest += [m + s for m, s in zip(means, stds)]
        highest += _published_points(ax, xs, cells, colour, kind)
    ax.set_xticks(range(len(fractions)), fractions)
    ax.set_xlim(-0.5, len(fractions) - 0.5)
    _y_from_zero(ax, max(highest))
