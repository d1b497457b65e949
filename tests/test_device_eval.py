"""Evaluation without host round-trips: label transfer, upsampling and the confusion matrix
run on the scores' device (CPU tensors here) and give what the numpy path gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.inference.evaluation import evaluate
from segfungi.inference.metrics import ConfusionMatrix
from segfungi.inference.transfer import scores_to_mask, scores_to_mask_tensor, transfer_labels


def numpy_confusion(preds, gts, classes, ignore=255):
    """The obvious reference: a histogram of (gt, pred) pairs over counted pixels."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for pred, gt in zip(preds, gts):
        keep = gt != ignore
        np.add.at(matrix, (gt[keep].astype(int), pred[keep].astype(int)), 1)
    return matrix


def test_tensor_updates_equal_numpy_updates():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (17, 9)).astype(np.uint8) for _ in range(6)]
    gts = [np.where(rng.random((17, 9)) < 0.2, 255, rng.integers(0, 5, (17, 9))).astype(np.uint8) for _ in range(6)]
    on_tensors, on_arrays = ConfusionMatrix(5), ConfusionMatrix(5)
    for pred, gt in zip(preds, gts):
        on_tensors.update(torch.from_numpy(pred), torch.from_numpy(gt))
        on_arrays.update(pred, gt)
    np.testing.assert_array_equal(on_tensors.matrix, numpy_confusion(preds, gts, 5))
    np.testing.assert_array_equal(on_arrays.matrix, on_tensors.matrix)
    assert on_tensors.miou() == on_arrays.miou()
    on_tensors.update(torch.from_numpy(preds[0]), torch.from_numpy(gts[0]))  # counts again after a read
    assert on_tensors.num_pixels == on_arrays.num_pixels + int((gts[0] != 255).sum())


def test_an_out_of_range_tensor_class_is_reported_when_read():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 7]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"prediction holds class id 7, outside 0..2"):
        matrix.miou()
    only_ignored = ConfusionMatrix(3)
    only_ignored.update(torch.tensor([9]), torch.tensor([255]))
    assert only_ignored.num_pixels == 0


def test_masks_and_transfer_stay_tensors_where_the_scores_are():
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.random((2, 4, 4, 6)).astype(np.float32))
    masks = scores_to_mask_tensor(scores, (16, 16))
    assert isinstance(masks, torch.Tensor) and masks.dtype == torch.uint8 and masks.device == scores.device
    np.testing.assert_array_equal(masks.numpy(), scores_to_mask(scores, (16, 16)))
    sims = torch.tensor([[0.9, 0.5, -torch.inf]])
    ids = torch.tensor([[[1, -1], [2, 0], [-1, -1]]])
    weights = torch.tensor([[[0.75, 0.0], [0.5, 0.5], [0.0, 0.0]]])
    out = transfer_labels(sims, (ids, weights), temperature=0.1, num_classes=3)
    attention = torch.softmax(torch.tensor([9.0, 5.0]), 0)
    expected = torch.tensor([attention[1] * 0.5, attention[0] * 0.75, attention[1] * 0.5])
    torch.testing.assert_close(out[0], expected)


@pytest.mark.parametrize("kind", ["exact", "device-exact"])
def test_evaluation_equals_a_numpy_reference(kind, tmp_path, demo_voc_root):
    """evaluate's confusion matrix (tensor masks, tensor counts; device-exact: search_tensor)
    equals one counted in numpy from the same scores."""
    from segfungi.components import bank_settings, eval_spec, open_val_dataset
    from segfungi.data.augment import eval_transform
    from segfungi.inference.evaluation import image_batches
    from segfungi.inference.segmenter import Segmenter

    settings = tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings"}, index={"kind": kind})
    out = build_bank(settings, tmp_path / kind, progress=False)
    results = evaluate(out, progress=False)
    segmenter = Segmenter.from_settings(out)
    recorded = bank_settings(out)
    dataset, size = open_val_dataset(recorded), segmenter.image_size
    preds, gts = [], []
    for batch in image_batches(len(dataset), eval_spec(recorded)):
        pairs = [eval_transform(dataset[i].image, dataset[i].mask, size=size) for i in batch]
        feats = segmenter.patch_features(np.stack([image for image, _ in pairs]))
        dim = feats.shape[-1]
        sims, ids = segmenter.index.search(feats.reshape(-1, dim).numpy(), segmenter.transfer.k)  # numpy in and out
        ids = torch.as_tensor(ids)
        scores = transfer_labels(torch.as_tensor(sims), (segmenter.label_ids[ids], segmenter.label_weights[ids]),
                                 segmenter.transfer.temperature, segmenter.num_classes)
        preds += list(scores_to_mask(scores.reshape(len(batch), *segmenter.extractor.backbone.grid, -1), (size, size)))
        gts += [np.asarray(mask) for _, mask in pairs]
    reference = numpy_confusion(preds, gts, segmenter.num_classes)
    iou = np.diag(reference) / (reference.sum(0) + reference.sum(1) - np.diag(reference)).clip(min=1e-300)
    defined = (reference.sum(0) + reference.sum(1)) > 0
    assert results["miou"] == pytest.approx(float(iou[defined].mean()), abs=1e-12)
