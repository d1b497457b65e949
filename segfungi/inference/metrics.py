"""Confusion matrix over a split: per-class IoU, mIoU, pixel accuracy.

IoU_c = TP / (TP + FP + FN). A class absent from both the ground truth and the
predictions of the whole split has 0/0: its IoU is NaN and mIoU is the mean over the
other classes (the usual mmseg / Hummingbird convention), so a class missing from a
small validation subset does not count as a failure.

`update` takes numpy arrays or torch tensors: tensors are counted where they are (a
GPU's counts stay on the GPU, no copy per image) and added to `matrix` when it is next
read; class ids out of range are then reported.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ConfusionMatrix:
    """`matrix[g, p]` counts pixels of ground-truth class g predicted as p (int64)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self._pending = None  # counts of tensors not yet added to _matrix (on their device)
        self._pending_range = None  # lowest and highest class ids of those tensors

    @property
    def matrix(self) -> np.ndarray:
        self._flush()
        return self._matrix

    @matrix.setter
    def matrix(self, value) -> None:
        self._flush()
        self._matrix = np.asarray(value, dtype=np.int64)

    def update(self, pred, gt) -> None:
        """Adds one prediction / ground-truth pair (any matching shapes); ignore pixels of
        gt are skipped. Torch tensors are counted on their device."""
        import torch

        if isinstance(pred, torch.Tensor) and isinstance(gt, torch.Tensor):
            self._update_tensor(pred, gt.to(pred.device))
            return
        pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else pred
        gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else gt
        pred, gt = np.asarray(pred).reshape(-1), np.asarray(gt).reshape(-1)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
        counted = gt != self.ignore_index
        pred, gt = pred[counted].astype(np.int64), gt[counted].astype(np.int64)
        self._check_range(gt, "ground truth")
        self._check_range(pred, "prediction")
        pairs = np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2)
        self._matrix += pairs.reshape(self.num_classes, self.num_classes)

    def _update_tensor(self, pred, gt) -> None:
        """Counts on the tensors' device, without a boolean selection (which would wait for
        the device): ignored and out-of-range pixels go to an extra bin that is dropped;
        the lowest and highest class ids seen are kept for the check in `_flush`."""
        import torch

        pred, gt = pred.reshape(-1).long(), gt.reshape(-1).long()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, ground truth {gt.numel()}")
        if not pred.numel():
            return
        classes = self.num_classes
        counted = gt != self.ignore_index
        top, bottom = torch.iinfo(torch.int64).max, torch.iinfo(torch.int64).min
        low = torch.stack([torch.where(counted, gt, top).min(), torch.where(counted, pred, top).min()])
        high = torch.stack([torch.where(counted, gt, bottom).max(), torch.where(counted, pred, bottom).max()])
        inside = counted & (gt >= 0) & (gt < classes) & (pred >= 0) & (pred < classes)
        bins = torch.bincount(torch.where(inside, gt * classes + pred, classes**2), minlength=classes**2 + 1)
        if self._pending is None:
            self._pending, self._pending_range = bins[: classes**2], torch.stack([low, high])
        else:
            self._pending += bins[: classes**2]
            self._pending_range = torch.stack([torch.minimum(self._pending_range[0], low),
                                               torch.maximum(self._pending_range[1], high)])

    def _flush(self) -> None:
        if self._pending is None:
            return
        pending, (low, high) = self._pending.cpu().numpy(), self._pending_range.cpu().numpy()
        self._pending = self._pending_range = None
        for column, what in ((0, "ground truth"), (1, "prediction")):
            if low[column] <= high[column]:  # some pixel was counted
                self._check_range(np.array([low[column], high[column]]), what)
        self._matrix += pending.reshape(self.num_classes, self.num_classes)

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
        self._matrix = self.matrix + other.matrix

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
