"""Confusion matrix over a split: per-class IoU, mIoU, pixel accuracy.

IoU_c = TP / (TP + FP + FN). A class absent from both the ground truth and the
predictions of the whole split has 0/0: its IoU is NaN and mIoU is the mean over the
other classes (the usual mmseg / Hummingbird convention), so a class missing from a
small validation subset does not count as a failure.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ConfusionMatrix:
    """`matrix[g, p]` counts pixels of ground-truth class g predicted as p (int64)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, gt) -> None:
        """Adds one prediction / ground-truth pair (any matching shapes); ignore pixels of
        gt are skipped."""
        pred, gt = np.asarray(pred).reshape(-1), np.asarray(gt).reshape(-1)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
        counted = gt != self.ignore_index
        pred, gt = pred[counted].astype(np.int64), gt[counted].astype(np.int64)
        self._check_range(gt, "ground truth")
        self._check_range(pred, "prediction")
        pairs = np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2)
        self.matrix += pairs.reshape(self.num_classes, self.num_classes)

    def _check_range(self, labels: np.ndarray, what: str) -> None:
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise ValueError(
                f"{what} holds class id {bad}, outside 0..{self.num_classes - 1} "
                f"(ignore id is {self.ignore_index})"
            )

    def merge(self, other: "ConfusionMatrix") -> None:
        """Adds another matrix (e.g. from another evaluation process)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix

    @property
    def num_pixels(self) -> int:
        return int(self.matrix.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU (float64), NaN for classes in neither ground truth nor prediction."""
        true_positives = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - true_positives
        iou = np.full(self.num_classes, np.nan)
        np.divide(true_positives, union, out=iou, where=union > 0)
        return iou

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU (NaN if none is)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.num_pixels
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-friendly summary; undefined values (NaN) become None."""
        names = self._names(class_names)
        return {
            "miou": _json_float(self.miou()),
            "pixel_accuracy": _json_float(self.pixel_accuracy()),
            "num_pixels": self.num_pixels,
            "per_class_iou": {name: _json_float(v) for name, v in zip(names, self.iou())},
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """Per-class IoU in percent, then mIoU and pixel accuracy; '-' = undefined."""
        names = self._names(class_names)
        width = max([len("pixel acc"), *map(len, names)])
        lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
        lines += [f"{name:<{width}}  {_percent(v)}" for name, v in zip(names, self.iou())]
        lines.append("-" * (width + 9))
        lines.append(f"{'mIoU':<{width}}  {_percent(self.miou())}")
        lines.append(f"{'pixel acc':<{width}}  {_percent(self.pixel_accuracy())}")
        return "\n".join(lines)

    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(c) for c in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        return list(class_names)


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _percent(value: float) -> str:
    return "      -" if np.isnan(value) else f"{100 * value:7.2f}"
