"""Label transfer and mask upsampling against hand-computed numbers."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segfungi.inference.metrics import ConfusionMatrix
from segfungi.inference.transfer import attention_weights, neighbour_labels, scores_to_mask, transfer_labels
from segfungi.ops.sampling import compact_labels, dense_labels

# Two query patches, k = 2 neighbours, C = 3 classes, temperature 0.5.
# Query 0: sims (ln3 / 2, 0) -> sims / T = (ln 3, 0) -> softmax = (3/4, 1/4).
# Query 1: equal sims -> (1/2, 1/2).
SIMS = np.array([[math.log(3) / 2, 0.0], [0.2, 0.2]], dtype=np.float32)
LABELS = np.array(
    [
        [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]],  # neighbours of query 0
        [[0.0, 1.0, 0.0], [0.2, 0.8, 0.0]],  # neighbours of query 1
    ],
    dtype=np.float32,
)
# query 0: 3/4·(1, 0, 0) + 1/4·(0, .5, .5) = (0.75, 0.125, 0.125)
# query 1: 1/2·(0, 1, 0) + 1/2·(.2, .8, 0) = (0.1, 0.9, 0)
EXPECTED = np.array([[0.75, 0.125, 0.125], [0.1, 0.9, 0.0]])


def test_attention_hand_example():
    np.testing.assert_allclose(attention_weights(SIMS, 0.5), [[0.75, 0.25], [0.5, 0.5]], atol=1e-6)


def test_transfer_dense_hand_example():
    scores = transfer_labels(SIMS, LABELS, temperature=0.5, num_classes=3)
    assert scores.dtype == torch.float32 and scores.shape == (2, 3)
    np.testing.assert_allclose(scores, EXPECTED, atol=1e-6)


def test_transfer_compact_equals_dense():
    # The same labels in compact form: class ids with -1 padding, K = 2.
    ids = np.array([[[0, -1], [1, 2]], [[1, -1], [1, 0]]], dtype=np.int16)
    weights = np.array([[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.8, 0.2]]], dtype=np.float32)
    np.testing.assert_allclose(dense_labels(ids, weights, 3), LABELS)
    scores = transfer_labels(SIMS, (ids, weights), temperature=0.5, num_classes=3)
    np.testing.assert_allclose(scores, EXPECTED, atol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        transfer_labels(SIMS, (ids, weights), temperature=0.5)


def test_neighbour_labels_gathers_bank_rows_and_masks_missing():
    bank_ids, bank_weights = compact_labels(np.array([[4, 0, 0], [0, 1, 3]]), topk=2)
    # Missing neighbour: id -1 with sim -inf, as the indexes return them.
    ids, weights = neighbour_labels(bank_ids, bank_weights, np.array([[1, -1]]))
    assert ids.tolist() == [[[2, 1], [-1, -1]]]
    np.testing.assert_allclose(weights, [[[0.75, 0.25], [0, 0]]])
    scores = transfer_labels(np.array([[0.3, -np.inf]]), (ids, weights), 0.02, 3)
    np.testing.assert_allclose(scores, [[0.0, 0.25, 0.75]], atol=1e-6)
    no_neighbour = transfer_labels(np.full((1, 2), -np.inf), (ids, weights), 0.02, 3)
    np.testing.assert_array_equal(no_neighbour, [[0.0, 0.0, 0.0]])


def test_scores_to_mask_bilinear_hand_example():
    # One image, patch grid 1×2, two classes, upsampled to 1×8 pixels.
    # left patch = (0.6, 0.4), right patch = (0.0, 1.0).
    # align_corners=False: pixel x samples source s = (x + 0.5)·2/8 - 0.5, clamped to [0, 1]:
    #   x = 0..7 -> s = 0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1.
    # class 1 wins where (1-s)·0.4 + s·1 > (1-s)·0.6, i.e. s > 1/6:
    #   x=2 (s=.125): class0 .875·.6 = .525, class1 .875·.4 + .125 = .475 -> 0
    #   x=3 (s=.375): class0 .625·.6 = .375, class1 .625·.4 + .375 = .625 -> 1
    # (align_corners=True would give 0,0,1,... (s = 2/7 at x=2); nearest 0,0,0,0,1,...)
    scores = np.array([[[[0.6, 0.4], [0.0, 1.0]]]], dtype=np.float32)  # B×gh×gw×C
    mask = scores_to_mask(scores, out_size=(1, 8))
    assert mask.dtype == np.uint8 and mask.shape == (1, 1, 8)
    np.testing.assert_array_equal(mask[0, 0], [0, 0, 0, 1, 1, 1, 1, 1])

    # ... and its IoU against gt (0, 0, 1, 1, ignore, 1, 1, 0) with C = 3:
    # pixels (gt, pred): (0,0) (0,0) (1,0) (1,1) [ignored] (1,1) (1,1) (0,1)
    # class 0: TP 2, FP 1 (x=2), FN 1 (x=7) -> 2/4 = 0.5
    # class 1: TP 3, FP 1 (x=7), FN 1 (x=2) -> 3/5 = 0.6
    # class 2: in neither -> NaN, left out of the mean: mIoU = (0.5 + 0.6)/2 = 0.55
    # pixel accuracy: 5 correct of 7 counted pixels.
    cm = ConfusionMatrix(3)
    cm.update(mask[0], np.array([[0, 0, 1, 1, 255, 1, 1, 0]], dtype=np.uint8))
    np.testing.assert_allclose(cm.iou(), [0.5, 0.6, np.nan])
    assert cm.miou() == pytest.approx(0.55) and cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_scores_to_mask_default_size_and_batch():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.random((2, 32, 32, 21), dtype=np.float32))
    masks = scores_to_mask(scores)
    assert masks.shape == (2, 512, 512) and masks.dtype == np.uint8
    # Channel-last input, batch of images: must equal upsampling each channel-first map.
    reference = torch.nn.functional.interpolate(
        scores.permute(0, 3, 1, 2), size=(512, 512), mode="bilinear", align_corners=False
    ).argmax(dim=1)
    np.testing.assert_array_equal(masks, reference.numpy())
    # A patch whose class dominates its 3×3 neighbourhood owns its 16×16 pixels.
    scores[0, 4:7, 4:7, 20] = 5.0
    np.testing.assert_array_equal(scores_to_mask(scores)[0, 80:96, 80:96], 20)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 8)), elements=st.floats(-1, 1, width=32)),
    st.integers(1, 5),
    st.floats(0.01, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_transfer_scores_are_a_convex_combination(sims, num_classes, temperature, seed):
    rng = np.random.default_rng(seed)
    queries, k = sims.shape
    labels = rng.random((queries, k, num_classes)).astype(np.float32)
    labels /= labels.sum(axis=-1, keepdims=True)  # each neighbour: a distribution
    labels[:, 0] *= rng.random()  # ... or partial mass, as for dropped classes
    scores = transfer_labels(sims, labels, temperature, num_classes).numpy()
    assert (scores >= 0).all() and (scores.sum(axis=1) <= 1 + 1e-5).all()
    assert (scores <= labels.max(axis=1) + 1e-6).all()  # per class, within the neighbours' range
    if k > 1:  # neighbours with full distributions only: the scores sum to exactly 1
        full = transfer_labels(sims[:, 1:], labels[:, 1:], temperature, num_classes).numpy()
        np.testing.assert_allclose(full.sum(axis=1), 1, atol=1e-5)
