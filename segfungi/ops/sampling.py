"""Which patches of an augmented image go into the memory bank, and their labels.

Hummingbird keeps K = S // (N·E) patches per augmented view (bank size S, N training
images, E augmentation epochs) and favours patches of classes that are rare *in this
view*. With P_t the set of classes having at least one pixel in patch t of the view,

    n_c     = |{t : c ∈ P_t}|                  patches of the view containing class c
    score_t = (Σ_{c ∈ P_t} n_c) × u_t,         u_t ~ U(0, 1), one draw per patch,

and the K patches with the *smallest* scores are kept. A patch of a class confined to a
few patches scores low; a patch of the dominant class (often background) scores high,
but with a small u_t it still gets in, so the bank keeps a share of common-class
patches (expected share: see tests/test_sampling.py). No dataset-wide class frequency
enters the rule: each view is scored on its own. This is the rule of
open-hummingbird-eval (`HbirdEvaluation._sample_features`).

Patches without a single labelled pixel (P_t empty) carry no label to transfer: they
rank after every labelled patch and are kept only when fewer labelled patches exist
than K, so every view contributes exactly K rows. Ties (equal scores, which need
equal integer sums times equal draws) go to the lower patch index, so the choice is a
deterministic function of the histograms and the seed.

"Labelled" and "present" are read from the same patch histograms the bank stores as
labels, so they follow `bank.void_label` (see `void_class`): by default a void (255)
pixel of a dataset with a background class counts as background, making every patch of
a VOC view labelled, as in the reference, which maps 255 to 0 before both its sampler
and its label histograms; with `ignore`, void pixels make no class present.

Labels in the bank are compact: the `topk` most frequent classes of each patch with
their fractions of the patch's labelled pixels (see `compact_labels`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

VOID_LABEL_CHOICES = ("background", "ignore")


def _histograms(hist) -> np.ndarray:
    hist = hist.cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
    if hist.ndim != 2:
        raise ValueError(f"expected patch histograms of shape patches × classes, got {hist.shape}")
    if (hist < 0).any():
        raise ValueError("patch histograms must be non-negative counts")
    return hist


def void_class(void_label: str, classes: Sequence[str]) -> int | None:
    """The class a void (255) pixel of a bank view counts as, or None (no label).

    `background`: class 0 when the dataset has a background class there (VOC, and any
    dataset whose first class is named "background"); datasets without one (ADE20K,
    whose 255 is its "other" pixels, COCO-Stuff, a folder dataset of named classes)
    have nothing void could be, so their void pixels stay unlabelled. `ignore`: never.
    Evaluation ignores 255 in every case; this only shapes the bank's labels."""
    if void_label not in VOID_LABEL_CHOICES:
        raise ValueError(f"bank.void_label must be one of {', '.join(VOID_LABEL_CHOICES)}, got {void_label!r}")
    has_background = len(classes) > 0 and str(classes[0]).strip().lower() == "background"
    return 0 if void_label == "background" and has_background else None


def patch_scores(histograms, noise) -> np.ndarray:
    """(Σ_{c present in t} n_c) × u_t per patch, float64; `noise` holds u (one per patch).
    Patches with no labelled pixel score 0 (they are ranked separately)."""
    present = _histograms(histograms) > 0
    noise = np.asarray(noise, dtype=np.float64)
    if noise.shape != (present.shape[0],):
        raise ValueError(f"{noise.shape} noise values for {present.shape[0]} patches")
    patches_with_class = present.sum(axis=0)  # n_c, exact integers
    return (present.astype(np.int64) @ patches_with_class) * noise


def rank_patches(histograms, noise) -> np.ndarray:
    """Every patch index (int64), in the order the rule takes them for this noise:
    labelled before unlabelled, then smaller score, then lower patch index. The order
    is total, so the n kept for any n are its first n: a smaller bank's kept patches are
    a subset of a larger one's (same seed), which lets one encoding serve every size."""
    hist = _histograms(histograms)
    scores = patch_scores(hist, noise)
    unlabelled = hist.sum(axis=1) == 0
    # np.lexsort sorts by the last key first.
    return np.lexsort((np.arange(hist.shape[0]), scores, unlabelled)).astype(np.int64)


def keep_smallest(histograms, n_keep: int, noise) -> np.ndarray:
    """Indices (ascending, int64) of the n_keep patches the rule keeps for this noise."""
    return np.sort(rank_patches(histograms, noise)[: max(0, n_keep)])


def patch_ranking(histograms, seed: int | Sequence[int]) -> np.ndarray:
    """`rank_patches` with u drawn from `np.random.default_rng(seed)` (one U[0, 1) per
    patch, in patch order). `seed` is anything `default_rng` takes; a bank passes one
    derived from (bank seed, epoch, image), so every view has its own stream."""
    hist = _histograms(histograms)
    return rank_patches(hist, np.random.default_rng(seed).random(hist.shape[0]))


def select_patches(histograms, n_keep: int, seed: int | Sequence[int]) -> torch.Tensor:
    """The n_keep patches `patch_ranking` puts first, ascending; a LongTensor."""
    return torch.from_numpy(np.sort(patch_ranking(histograms, seed)[: max(0, n_keep)]))


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
