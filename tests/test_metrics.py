"""Confusion matrix, IoU and mIoU against a naive per-pixel implementation."""

import json

import numpy as np
import pytest

from segfungi.inference.metrics import ConfusionMatrix


def naive_iou(preds, gts, num_classes, ignore=255):
    """Per-class IoU by counting pixels one at a time (independent of bincount)."""
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for pred, gt in zip(preds, gts):
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g == ignore:
                continue
            if p == g:
                tp[g] += 1
            else:
                fp[p] += 1
                fn[g] += 1
    return [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else float("nan")
            for c in range(num_classes)]


def test_matches_naive_implementation_on_random_masks_with_ignore():
    rng = np.random.default_rng(0)
    num_classes = 6
    preds, gts = [], []
    for _ in range(3):
        gt = rng.integers(0, 5, (20, 30)).astype(np.uint8)  # class 5 never in gt
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 4, gt.shape)).astype(np.uint8)
        pred[gt == 255] = rng.integers(0, 6, (gt == 255).sum())  # predictions at ignore pixels don't count
        preds.append(pred)
        gts.append(gt)
    cm = ConfusionMatrix(num_classes)
    for pred, gt in zip(preds, gts):
        cm.update(pred, gt)
    expected = naive_iou(preds, gts, num_classes)
    np.testing.assert_allclose(cm.iou(), expected)
    assert np.isnan(cm.iou()[5])  # absent from both gt and the counted predictions
    assert cm.miou() == pytest.approx(np.mean(expected[:5]))
    counted = np.concatenate([g.ravel() for g in gts]) != 255
    correct = np.concatenate([(p == g).ravel() for p, g in zip(preds, gts)])
    assert cm.pixel_accuracy() == pytest.approx(correct[counted].mean())
    assert cm.matrix.dtype == np.int64 and cm.num_pixels == counted.sum()


def test_sklearn_confusion_matrix_agrees():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, 500)
    pred = rng.integers(0, 4, 500)
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    np.testing.assert_array_equal(cm.matrix, sklearn_metrics.confusion_matrix(gt, pred, labels=range(4)))


def test_predicted_but_absent_class_has_zero_iou():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 2]), np.array([0, 0]))
    # class 0: TP 1, FN 1 -> 1/2; class 1: nowhere -> NaN; class 2: FP 1 -> 0
    np.testing.assert_allclose(cm.iou(), [0.5, np.nan, 0.0])
    assert cm.miou() == pytest.approx(0.25)


def test_merge_equals_single_pass_and_errors():
    rng = np.random.default_rng(2)
    pred, gt = rng.integers(0, 3, (2, 100)), rng.integers(0, 3, (2, 100))
    whole, first, second = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    whole.update(pred, gt)
    first.update(pred[0], gt[0])
    second.update(pred[1], gt[1])
    first.merge(second)
    np.testing.assert_array_equal(first.matrix, whole.matrix)
    with pytest.raises(ValueError, match="class id 7"):
        whole.update(np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="pixels"):
        whole.update(np.zeros(3), np.zeros(4))


def test_empty_matrix_is_nan_and_reports_are_readable():
    cm = ConfusionMatrix(2)
    assert np.isnan(cm.miou()) and np.isnan(cm.pixel_accuracy())
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1 -> 1/2
    summary = cm.to_dict(["sky", "tree"])
    assert summary == {"miou": 0.5, "pixel_accuracy": pytest.approx(2 / 3), "num_pixels": 3,
                       "per_class_iou": {"sky": 0.5, "tree": 0.5}}
    json.dumps(ConfusionMatrix(2).to_dict())  # NaN -> None keeps it valid JSON
    table = cm.table(["sky", "tree"])
    assert "sky" in table and "50.00" in table and table.splitlines()[-2].startswith("mIoU")
    with pytest.raises(ValueError, match="class names"):
        cm.table(["sky"])
