"""Which patches of an augmented image go into the memory bank, and their labels.

Hummingbird keeps a fixed number of patches per augmented image and favours patches
holding rare classes: patch t scores

    score_t = (Σ_c hist_tc / |hist_t| · w_c) × u_t,   u_t ~ U(0, 1),

with w_c = 1 / frequency of class c over the training set, and the n_keep best
scores are kept. The noise u_t keeps the choice random, so common classes still get
in. Patches without a single labelled pixel carry no label to transfer: they rank
after every labelled patch (and are kept only when fewer labelled patches exist
than n_keep, so every augmented image contributes exactly n_keep rows).

Labels in the bank are compact: the `topk` most frequent classes of each patch with
their fractions of the patch's labelled pixels (see `compact_labels`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _histograms(hist) -> np.ndarray:
    hist = hist.cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
    if hist.ndim != 2:
        raise ValueError(f"expected patch histograms of shape patches × classes, got {hist.shape}")
    if (hist < 0).any():
        raise ValueError("patch histograms must be non-negative counts")
    return hist


def rarity_scores(histograms, class_weights) -> np.ndarray:
    """Σ_c hist_tc / |hist_t| · w_c per patch (0 for patches with no labelled pixel)."""
    hist = _histograms(histograms).astype(np.float64)
    weights = np.asarray(class_weights, dtype=np.float64)
    if weights.shape != (hist.shape[1],):
        raise ValueError(f"{weights.shape[0]} class weights for {hist.shape[1]} classes")
    labelled_pixels = hist.sum(axis=1)
    return (hist @ weights) / np.maximum(labelled_pixels, 1)


def select_patches(
    histograms, n_keep: int, class_weights, seed: int | Sequence[int]
) -> torch.Tensor:
    """Indices (ascending, int64) of the n_keep patches with the best noisy rarity score.

    `seed` is anything `np.random.default_rng` takes; a bank passes e.g.
    `(bank_seed, image_index, epoch)` so every augmented image has its own stream.
    Ranking: labelled before unlabelled, then higher score, then lower patch index
    (the last only matters for exact float ties, which makes the choice deterministic).
    """
    hist = _histograms(histograms)
    noise = np.random.default_rng(seed).random(hist.shape[0])
    scores = rarity_scores(hist, class_weights) * noise
    unlabelled = hist.sum(axis=1) == 0
    # np.lexsort sorts by the last key first.
    ranking = np.lexsort((np.arange(hist.shape[0]), -scores, unlabelled))
    kept = np.sort(ranking[: max(0, n_keep)])
    return torch.from_numpy(kept.astype(np.int64))


class ClassFrequency:
    """Pixel counts per class over a dataset; weights() = 1 / frequency.

    Pixel counts, not "patches containing the class": the score multiplies w_c by
    the class's pixel fraction inside the patch, so the frequency is measured in the
    same unit, and summing patch histograms gives exactly the dataset's pixel counts
    (a thin object touching many patches is not counted as common).
    """

    def __init__(self, num_classes: int, counts: Sequence[int] | None = None):
        self.num_classes = num_classes
        self.counts = np.zeros(num_classes, dtype=np.int64)
        if counts is not None:
            self.counts += np.asarray(counts, dtype=np.int64)

    def update(self, hist) -> None:
        """Adds class counts: patch histograms (…×C) or a per-image count vector (C)."""
        hist = hist.cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
        if hist.shape[-1] != self.num_classes:
            raise ValueError(f"histogram has {hist.shape[-1]} classes, expected {self.num_classes}")
        self.counts += hist.reshape(-1, self.num_classes).sum(axis=0, dtype=np.int64)

    def frequencies(self) -> np.ndarray:
        total = self.counts.sum()
        return self.counts / total if total > 0 else np.zeros(self.num_classes)

    def weights(self) -> np.ndarray:
        """1 / frequency; 0 for classes never seen (they cannot occur in a patch of the
        same training set, and 0 keeps the weights finite)."""
        freq = self.frequencies()
        weights = np.zeros(self.num_classes)
        np.divide(1.0, freq, out=weights, where=freq > 0)
        return weights

    def to_list(self) -> list[int]:
        """JSON-friendly counts (for a bank manifest); `ClassFrequency(C, counts)` restores."""
        return self.counts.tolist()


def compact_labels(hist, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The topk classes of each patch: (ids N×K int16, weights N×K float32).

    weights are fractions of the patch's labelled pixels, so they sum to the kept
    mass (1 whenever the patch holds at most topk classes, which is almost always
    with topk = 8 on 16×16 patches) and `dense_labels` gives back hist / |hist|
    exactly in that case. Renormalising to 1 would invent mass for kept classes.
    Classes are ordered by count (ties: lower class id first); unused slots and
    unlabelled patches hold id -1 and weight 0.
    """
    hist = _histograms(hist)
    num_patches, num_classes = hist.shape
    if num_classes > np.iinfo(np.int16).max:
        raise ValueError(f"{num_classes} classes do not fit int16 label ids")
    order = np.argsort(-hist, axis=1, kind="stable")[:, :topk]
    counts = np.take_along_axis(hist, order, axis=1).astype(np.float64)
    labelled_pixels = np.maximum(hist.sum(axis=1, keepdims=True), 1)
    ids = np.full((num_patches, topk), -1, dtype=np.int16)
    weights = np.zeros((num_patches, topk), dtype=np.float32)
    kept_width = order.shape[1]  # topk may exceed the number of classes
    present = counts > 0
    ids[:, :kept_width] = np.where(present, order, -1)
    weights[:, :kept_width] = np.where(present, counts / labelled_pixels, 0.0)
    return ids, weights


def dense_labels(ids, weights, num_classes: int) -> np.ndarray:
    """Inverse of `compact_labels`: …×K ids/weights -> …×C float32 (ids -1 ignored)."""
    ids, weights = np.asarray(ids), np.asarray(weights, dtype=np.float32)
    dense = np.zeros((ids.size // max(1, ids.shape[-1]), num_classes + 1), dtype=np.float32)
    rows = np.repeat(np.arange(dense.shape[0]), ids.shape[-1])
    # Padding id -1 lands in the extra last column, which is dropped.
    columns = np.where(ids < 0, num_classes, ids).reshape(-1)
    np.add.at(dense, (rows, columns), weights.reshape(-1))
    return dense[:, :num_classes].reshape(*ids.shape[:-1], num_classes)
